"""Wire format: every message round-trips; malformed input only ever raises ProtocolError."""

from __future__ import annotations

import contextlib
import json
import struct
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wwwserve import ledger, membership  # noqa: F401  (registers their messages)
from wwwserve.engines import ChatMessage, Chunk, CompletionRequest
from wwwserve.errors import ProtocolError
from wwwserve.identity import Identity
from wwwserve.market import messages  # noqa: F401
from wwwserve.wire import (
    FrameDecoder,
    Message,
    Signed,
    decode,
    encode,
    encode_frame,
    message,
    message_types,
    seal,
    unseal,
)

finite = st.floats(allow_nan=False, allow_infinity=False)


@message("test-sample", 1)
@dataclass(frozen=True, slots=True)
class Sample(Message):
    name: str
    count: int
    ratio: float
    blob: bytes
    flag: bool
    maybe: int | None
    tags: tuple[str, ...]
    weights: dict[str, float]


st.register_type_strategy(float, finite)
st.register_type_strategy(int, st.integers(-(2**63), 2**64 - 1))  # what msgpack can carry


# messages whose own checks want pass-through fields as JSON objects without reserved keys
_json_objects = st.just("") | st.dictionaries(
    st.sampled_from(["tools", "stop", "seed", "logprobs", "x"]),
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=5),
    min_size=1, max_size=3).map(json.dumps)
st.register_type_strategy(ChatMessage, st.builds(
    ChatMessage, role=st.text(max_size=5), content=st.none() | st.text(max_size=5),
    extra=_json_objects))
st.register_type_strategy(CompletionRequest, st.builds(
    CompletionRequest, max_tokens=st.none() | st.integers(1, 2**31), extra=_json_objects))
st.register_type_strategy(Chunk, st.builds(
    Chunk, tokens=st.integers(0, 2**31), delta=_json_objects,
    logprobs=st.just("") | st.just("null") | st.just('{"content": []}')))


def strategy_for(cls: type[Message]) -> st.SearchStrategy[Message]:
    return st.from_type(cls)


def test_unencodable_values_are_protocol_errors():
    with pytest.raises(ProtocolError, match="cannot encode"):
        encode(Sample("n", 2**70, 0.5, b"", True, None, (), {}))


@pytest.mark.parametrize("cls", message_types(), ids=lambda c: c.TYPE)
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_every_message_type_round_trips(cls, data):
    msg = data.draw(strategy_for(cls))
    assert decode(encode(msg)) == msg
    assert decode(encode(msg), expect=cls) == msg


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_protocol_error(data):
    with contextlib.suppress(ProtocolError):
        decode(data)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_truncated_messages_only_raise_protocol_error(data):
    msg = data.draw(strategy_for(Sample))
    raw = encode(msg)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(ProtocolError):
        decode(raw[:cut])


@settings(max_examples=300, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | finite | st.text(max_size=5)
    | st.binary(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner,
                                                                 max_size=4),
    max_leaves=20,
))
def test_wrong_shapes_only_raise_protocol_error(body):
    import msgpack

    for tag in ("test-sample", "heartbeat", "signed", "nope"):
        raw = msgpack.packb({"t": tag, "v": 1, "b": body}, use_bin_type=True)
        with contextlib.suppress(ProtocolError):
            decode(raw)


def test_field_types_are_strict():
    import msgpack

    good = encode(Sample("n", 1, 0.5, b"", True, None, ("a",), {"w": 1.0}))
    body = msgpack.unpackb(good)["b"]
    for key, bad in [("count", True), ("count", 1.5), ("name", b"n"), ("tags", "a"),
                     ("weights", {"w": "x"}), ("ratio", float("nan")), ("flag", 1)]:
        raw = msgpack.packb({"t": "test-sample", "v": 1, "b": {**body, key: bad}})
        with pytest.raises(ProtocolError, match=key):
            decode(raw)
    with pytest.raises(ProtocolError, match="exactly the fields"):
        decode(msgpack.packb({"t": "test-sample", "v": 1, "b": {**body, "extra": 1}}))
    with pytest.raises(ProtocolError, match="unknown message type"):
        decode(msgpack.packb({"t": "test-sample", "v": 2, "b": body}))
    with pytest.raises(ProtocolError, match="expected a 'signed'"):
        decode(good, expect=Signed)


def test_sealed_envelopes_verify():
    alice, mallory = Identity.generate(), Identity.generate()
    msg = Sample("n", 1, 0.5, b"", True, None, (), {})
    env = seal(msg, alice)
    assert unseal(decode(encode(env)), expect=Sample) == msg
    with pytest.raises(ProtocolError, match="bad signature"):
        unseal(Signed(signer=mallory.peer_id, body=env.body, signature=env.signature))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=2000), max_size=8), st.integers(1, 64))
def test_frames_round_trip_in_any_chunking(payloads, step):
    stream = b"".join(encode_frame(p) for p in payloads)
    dec = FrameDecoder()
    out = []
    for i in range(0, len(stream), step):
        dec.feed(stream[i:i + step])
        out.extend(dec.frames())
    dec.close()
    assert out == payloads


def test_oversized_frame_rejected_from_its_header_alone():
    dec = FrameDecoder(max_size=1024)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        dec.feed(struct.pack(">I", 2**31))  # nothing but the header
    assert dec.buffered == 0
    with pytest.raises(ProtocolError):
        encode_frame(b"x" * 1025, max_size=1024)


def test_truncated_frame_detected_at_close():
    dec = FrameDecoder()
    dec.feed(encode_frame(b"hello")[:-1])
    assert list(dec.frames()) == []
    with pytest.raises(ProtocolError, match="ended inside a frame"):
        dec.close()
