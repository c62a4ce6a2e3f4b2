"""The offload and probe streams as state machines: every transition, every illegal event,
and random event sequences (hypothesis), without a network."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wwwserve.engines import Chunk, CompletionRequest, Usage
from wwwserve.errors import ProtocolError
from wwwserve.evidence import AnswerReceipt
from wwwserve.identity import Identity
from wwwserve.market.messages import Offload, Probe, ProbeReply
from wwwserve.market.protocol import (
    KEEPALIVE,
    Accepted,
    Broken,
    Data,
    Ended,
    ExecutorStream,
    Keepalive,
    Phase,
    ProbeExchange,
    Receipt,
    Refused,
    RequesterStream,
    offload_request,
    probe_request,
)
from wwwserve.wire import Signed, decode, encode, seal, unseal

IDENT = Identity.from_seed(b"\x01" * 32)
ACCEPT = encode(ProbeReply(accept=True, model="m"))
REFUSE = encode(ProbeReply(accept=False, reason="busy"))
PIECE = encode(Chunk(text="hello ", tokens=1))
FINAL = encode(Chunk(text="world", tokens=1, finish_reason="stop",
                     usage=Usage(prompt_tokens=3, completion_tokens=2)))
ALIVE = encode(KEEPALIVE)
RECEIPT = encode(seal(AnswerReceipt(requester="r", request_id="x", digest=b"\x00" * 32), IDENT))
PROBE = encode(Probe(request_id="x", model="m", prompt_tokens=1, max_tokens=1))
GARBAGE = b"\xc1not msgpack"


def feed(stream: RequesterStream, *frames: bytes) -> list[object]:
    return [stream.receive(f) for f in frames]


# ---- the requester's side: every legal transition ---------------------------------------
def test_a_whole_answer_goes_accept_stream_finish_receipt_end() -> None:
    s = RequesterStream()
    assert s.phase is Phase.AWAIT_REPLY
    assert s.receive(ACCEPT) == Accepted("m") and s.phase is Phase.STREAMING
    assert s.receive(ALIVE) == Keepalive() and s.phase is Phase.STREAMING
    piece = s.receive(PIECE)
    assert isinstance(piece, Data) and piece.chunk.text == "hello " and piece.usage is None
    assert not s.whole
    final = s.receive(FINAL)
    assert isinstance(final, Data) and final.usage == Usage(prompt_tokens=3, completion_tokens=2)
    assert s.whole and s.phase is Phase.AWAIT_END and s.usage == final.usage
    assert s.receive(RECEIPT) == Receipt(RECEIPT) and s.phase is Phase.DONE
    assert s.end() == Ended() and s.phase is Phase.DONE


def test_the_end_without_a_receipt_is_fine_after_a_whole_answer() -> None:
    s = RequesterStream()
    feed(s, ACCEPT, FINAL)
    assert s.end() == Ended() and s.phase is Phase.DONE


def test_a_final_chunk_without_usage_counts_as_empty_usage() -> None:
    s = RequesterStream()
    feed(s, ACCEPT)
    event = s.receive(encode(Chunk(text="x", finish_reason="length")))
    assert isinstance(event, Data) and event.usage == Usage()


def test_a_refusal_says_why_and_ends_the_stream() -> None:
    s = RequesterStream()
    assert s.receive(REFUSE) == Refused("busy") and s.phase is Phase.REFUSED
    assert RequesterStream().receive(encode(ProbeReply(accept=False))) == Refused("busy")
    assert RequesterStream().receive(
        encode(ProbeReply(accept=False, reason="model"))) == Refused("model")


def test_an_end_before_the_reply_is_a_silent_refusal() -> None:
    s = RequesterStream()
    assert s.end() == Refused("closed") and s.phase is Phase.REFUSED


def test_an_end_mid_answer_is_broken() -> None:
    s = RequesterStream()
    feed(s, ACCEPT, PIECE)
    assert s.end() == Broken("ended without finishing") and s.phase is Phase.FAILED
    assert not s.whole


# ---- the requester's side: every illegal event -------------------------------------------
@pytest.mark.parametrize("first", [PIECE, FINAL, ALIVE, RECEIPT, PROBE, GARBAGE, b""])
def test_anything_but_a_reply_first_is_a_protocol_error(first: bytes) -> None:
    s = RequesterStream()
    with pytest.raises(ProtocolError):
        s.receive(first)
    assert s.phase is Phase.FAILED


@pytest.mark.parametrize("frame", [ACCEPT, REFUSE, RECEIPT, PROBE, GARBAGE])
def test_anything_but_chunks_while_streaming_is_a_protocol_error(frame: bytes) -> None:
    s = RequesterStream()
    feed(s, ACCEPT, PIECE)
    with pytest.raises(ProtocolError):
        s.receive(frame)
    assert s.phase is Phase.FAILED and not s.whole


@pytest.mark.parametrize("frame", [PIECE, FINAL, ALIVE, ACCEPT, PROBE, GARBAGE])
def test_anything_but_a_receipt_after_the_answer_is_a_protocol_error(frame: bytes) -> None:
    s = RequesterStream()
    feed(s, ACCEPT, FINAL)
    with pytest.raises(ProtocolError, match=r"more after the end|msgpack|decode|invalid"):
        s.receive(frame)
    assert s.phase is Phase.FAILED
    assert s.whole  # the answer came whole: it still counts


def test_a_second_receipt_is_a_protocol_error() -> None:
    s = RequesterStream()
    feed(s, ACCEPT, FINAL, RECEIPT)
    with pytest.raises(ProtocolError):
        s.receive(RECEIPT)


@pytest.mark.parametrize("prefix", [[REFUSE], [ACCEPT, FINAL, RECEIPT]])
def test_a_stream_that_is_over_takes_no_more_frames(prefix: list[bytes]) -> None:
    s = RequesterStream()
    feed(s, *prefix)
    with pytest.raises(ProtocolError, match="after the stream was"):
        s.receive(PIECE)


def test_the_end_of_a_failed_or_refused_stream_is_a_protocol_error() -> None:
    refused = RequesterStream()
    refused.receive(REFUSE)
    with pytest.raises(ProtocolError):
        refused.end()
    failed = RequesterStream()
    with pytest.raises(ProtocolError):
        failed.receive(GARBAGE)
    with pytest.raises(ProtocolError):
        failed.end()


# ---- the probe exchange ------------------------------------------------------------------
def test_a_probe_gets_one_reply() -> None:
    p = ProbeExchange()
    assert p.receive(ACCEPT) == ProbeReply(accept=True, model="m") and p.reply is not None
    with pytest.raises(ProtocolError, match="more than one"):
        p.receive(REFUSE)
    for bad in (PIECE, GARBAGE):
        with pytest.raises(ProtocolError):
            ProbeExchange().receive(bad)


def test_the_opening_frames_carry_the_request_and_its_route() -> None:
    request = CompletionRequest(model="m", prompt="hi", max_tokens=5, request_id="abc")
    probe = decode(probe_request(request, ("a",)), expect=Probe)
    assert (probe.request_id, probe.model, probe.max_tokens, probe.route) == ("abc", "m", 5,
                                                                              ("a",))
    off = decode(offload_request(request, ("a",), "me", offer=True), expect=Offload)
    assert off.route == ("a", "me") and off.hops == 2 and off.offer
    assert decode(off.request, expect=CompletionRequest) == request


# ---- the executor's side -----------------------------------------------------------------
def test_the_executor_sends_reply_chunks_and_a_receipt_over_the_text() -> None:
    e = ExecutorStream("requester", "rid")
    assert decode(e.accept("m"), expect=ProbeReply) == ProbeReply(accept=True, model="m")
    assert e.keepalive() == ALIVE
    e.chunk(Chunk(text="hello "))
    e.chunk(Chunk(text="world", finish_reason="stop"))
    assert e.phase is Phase.AWAIT_END
    envelope = e.finish(IDENT)
    assert envelope is not None and e.phase is Phase.DONE
    receipt = unseal(decode(envelope, expect=Signed), expect=AnswerReceipt)
    import hashlib

    assert receipt.requester == "requester" and receipt.request_id == "rid"
    assert receipt.digest == hashlib.sha256(b"hello world").digest()


def test_the_receipt_covers_the_tool_calls_a_user_sees() -> None:
    """Two answers with the same (empty) text but different tool calls are different
    answers: to a receipt and so to a duel's judges."""
    import json

    from wwwserve.engines import visible_text
    from wwwserve.evidence import digest

    def answer(city: str) -> tuple[bytes, str]:
        chunks = [Chunk(text="", delta=json.dumps({"tool_calls": [
                      {"index": 0, "id": "c", "type": "function",
                       "function": {"name": "weather", "arguments": ""}}]})),
                  Chunk(text="", delta=json.dumps({"tool_calls": [
                      {"index": 0, "function": {"arguments": json.dumps({"city": city})}}]}),
                        finish_reason="tool_calls")]
        e = ExecutorStream("requester", "rid")
        e.accept("m")
        for c in chunks:
            e.chunk(c)
        envelope = e.finish(IDENT)
        assert envelope is not None
        text = "".join(visible_text(c) for c in chunks)
        return unseal(decode(envelope, expect=Signed), expect=AnswerReceipt).digest, text

    paris, paris_text = answer("Paris")
    rome, _ = answer("Rome")
    assert paris != rome
    assert paris_text == '\n[tool call weather] {"city": "Paris"}'
    assert paris == digest(paris_text)  # what a duel checks a receipt against


def test_an_executor_without_identity_sends_no_receipt() -> None:
    e = ExecutorStream("r", "x")
    e.accept("m")
    assert e.finish(None) is None and e.phase is Phase.DONE


def test_misusing_the_executor_side_is_a_protocol_error() -> None:
    e = ExecutorStream("r", "x")
    for early in (lambda: e.chunk(Chunk(text="x")), e.keepalive, lambda: e.finish(None)):
        with pytest.raises(ProtocolError):
            early()
    assert decode(e.refuse("busy"), expect=ProbeReply).reason == "busy"
    with pytest.raises(ProtocolError):
        e.accept("m")  # refused already
    done = ExecutorStream("r", "x")
    done.accept("m")
    done.chunk(Chunk(text="x", finish_reason="stop"))
    with pytest.raises(ProtocolError):
        done.keepalive()  # the answer is whole
    with pytest.raises(ProtocolError):
        done.chunk(Chunk(text="more"))
    done.finish(None)
    with pytest.raises(ProtocolError):
        done.finish(None)


# ---- properties --------------------------------------------------------------------------
FRAMES = st.sampled_from([ACCEPT, REFUSE, PIECE, FINAL, ALIVE, RECEIPT, PROBE, GARBAGE]) | \
    st.binary(max_size=64)
EVENTS = (Accepted, Refused, Data, Keepalive, Receipt, Ended, Broken)


@settings(max_examples=400, deadline=None)
@given(st.lists(FRAMES, max_size=12), st.booleans())
def test_random_frames_only_ever_give_events_or_protocol_errors(frames: list[bytes],
                                                                ends: bool) -> None:
    """Whatever a peer sends, the requester's side answers with a documented event or a
    ProtocolError (nothing else), a failed or finished stream stays so, and an answer
    that came whole stays whole."""
    s = RequesterStream()
    whole = False
    for frame in frames:
        before = s.phase
        try:
            event = s.receive(frame)
        except ProtocolError:
            assert s.phase is Phase.FAILED
            continue
        assert isinstance(event, EVENTS)
        assert before not in (Phase.DONE, Phase.REFUSED, Phase.FAILED)
        whole = whole or s.whole
        assert s.whole == whole
    if ends:
        try:
            assert isinstance(s.end(), EVENTS)
        except ProtocolError:
            assert s.phase is Phase.FAILED


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=8), st.integers(0, 3), st.booleans()), max_size=8),
       st.booleans())
def test_what_an_executor_sends_a_requester_reads_back(pieces: list[tuple[str, int, bool]],
                                                       signed: bool) -> None:
    """Any answer the executor's side encodes (chunks with keepalives between them, a final
    chunk, a receipt or not) is read back by the requester's side as the same chunks."""
    e = ExecutorStream("r", "x")
    frames = [e.accept("m")]
    sent = []
    for text, tokens, alive in pieces:
        if alive:
            frames.append(e.keepalive())
        chunk = Chunk(text=text or "·", tokens=tokens)
        sent.append(chunk)
        frames.append(e.chunk(chunk))
    last = Chunk(text="end", finish_reason="stop", usage=Usage(completion_tokens=len(sent)))
    sent.append(last)
    frames.append(e.chunk(last))
    receipt = e.finish(IDENT if signed else None)
    if receipt is not None:
        frames.append(receipt)
    s = RequesterStream()
    events = [s.receive(f) for f in frames]
    assert events[0] == Accepted("m")
    assert [ev.chunk for ev in events if isinstance(ev, Data)] == sent
    assert s.usage == last.usage
    assert (events[-1] == Receipt(receipt)) if receipt is not None else True
    assert s.end() == Ended()
