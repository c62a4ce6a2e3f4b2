"""Wire format: versioned msgpack messages and length-prefixed frames (sans-IO).

A **message** is a frozen dataclass registered with ``message()``, under a type tag and a
version. It is encoded as a msgpack map ``{"t": tag, "v": version, "b": {field: value}}``.
Field types are checked strictly on decode, from the dataclass annotations, with validators
compiled once at registration. Supported field types: ``str``, ``bytes``, ``int``, ``float``,
``bool``, ``X | None``, ``tuple[X, ...]``, ``dict[str, X]`` and nested **records**
(frozen dataclasses registered with ``record()``).

A **frame** is a 4-byte big-endian length followed by that many payload bytes.
``FrameDecoder`` checks the length against its limit *before* buffering the payload, so
an oversized frame costs nothing but its header.

Everything malformed raises ``ProtocolError`` and nothing else.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import struct
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import msgpack

from .errors import ProtocolError
from .identity import Identity, canonical_bytes, verify

__all__ = [
    "DEFAULT_MAX_FRAME",
    "FrameDecoder",
    "Message",
    "Signed",
    "decode",
    "encode",
    "encode_frame",
    "message",
    "message_types",
    "record",
    "seal",
    "signable_bytes",
    "unseal",
]

DEFAULT_MAX_FRAME = 4 * 1024 * 1024
_HEADER = struct.Struct(">I")

T = TypeVar("T")
_Validator = Callable[[Any, str], Any]


class Message:
    """Base class of wire messages; subclasses are created with ``message()``."""

    __slots__ = ()
    TYPE: ClassVar[str]
    VERSION: ClassVar[int]


_M = TypeVar("_M", bound=Message)
_MESSAGES: dict[tuple[str, int], type[Message]] = {}
_RECORDS: set[type] = set()
_FIELD_VALIDATORS: dict[type, tuple[tuple[str, _Validator], ...]] = {}


def _fail(where: str, expected: str, value: Any) -> typing.NoReturn:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    raise ProtocolError(f"{where}: expected {expected}, got {shown}")


def _compile(tp: Any) -> _Validator:
    """Build a validator for annotation ``tp``: returns the (possibly converted) value."""
    if tp is str:

        def v_str(x: Any, where: str) -> Any:
            if type(x) is not str:
                _fail(where, "a string", x)
            return x

        return v_str
    if tp is bytes:

        def v_bytes(x: Any, where: str) -> Any:
            if type(x) is not bytes:
                _fail(where, "bytes", x)
            return x

        return v_bytes
    if tp is bool:

        def v_bool(x: Any, where: str) -> Any:
            if type(x) is not bool:
                _fail(where, "a boolean", x)
            return x

        return v_bool
    if tp is int:

        def v_int(x: Any, where: str) -> Any:
            if type(x) is not int:
                _fail(where, "an integer", x)
            return x

        return v_int
    if tp is float:

        def v_float(x: Any, where: str) -> Any:
            if type(x) is int:
                return float(x)
            if type(x) is not float or not math.isfinite(x):
                _fail(where, "a finite number", x)
            return x

        return v_float
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args and len(args) == 2:
        inner = _compile(next(a for a in args if a is not type(None)))

        def v_opt(x: Any, where: str) -> Any:
            return None if x is None else inner(x, where)

        return v_opt
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _compile(args[0])

        def v_tuple(x: Any, where: str) -> Any:
            if type(x) is not list and type(x) is not tuple:
                _fail(where, "a list", x)
            return tuple(item(e, f"{where}[{i}]") for i, e in enumerate(x))

        return v_tuple
    if origin is dict and len(args) == 2 and args[0] is str:
        val = _compile(args[1])

        def v_dict(x: Any, where: str) -> Any:
            if type(x) is not dict:
                _fail(where, "a map", x)
            out = {}
            for k, e in x.items():
                if type(k) is not str:
                    _fail(where, "string keys", k)
                out[k] = val(e, f"{where}.{k}")
            return out

        return v_dict
    if isinstance(tp, type) and tp in _RECORDS:
        cls = tp

        def v_record(x: Any, where: str) -> Any:
            return _build(cls, x, where)

        return v_record
    raise TypeError(f"unsupported wire field type: {tp!r}")


def _register_fields(cls: type) -> None:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass")
    hints = typing.get_type_hints(cls)
    _FIELD_VALIDATORS[cls] = tuple(
        (f.name, _compile(hints[f.name])) for f in dataclasses.fields(cls)
    )


def _build(cls: type[T], body: Any, where: str) -> T:
    if type(body) is not dict:
        _fail(where, "a map", body)
    validators = _FIELD_VALIDATORS[cls]
    if len(body) != len(validators):
        names = sorted(n for n, _ in validators)
        _fail(where, f"exactly the fields {names}", sorted(map(str, body)))
    kwargs = {}
    for name, check in validators:
        if name not in body:
            _fail(where, f"field {name!r}", sorted(map(str, body)))
        kwargs[name] = check(body[name], f"{where}.{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a record's own __post_init__ checks
        raise ProtocolError(f"{where}: {exc}") from None


def record(cls: type[T]) -> type[T]:
    """Register a dataclass as a record: a nested value inside messages."""
    _RECORDS.add(cls)
    _register_fields(cls)
    return cls


def message(tag: str, version: int = 1) -> Callable[[type[_M]], type[_M]]:
    """Class decorator registering a ``Message`` dataclass under ``(tag, version)``."""

    def wrap(cls: type[_M]) -> type[_M]:
        if (tag, version) in _MESSAGES:
            raise TypeError(f"wire message {tag!r} v{version} is registered twice")
        cls.TYPE = tag
        cls.VERSION = version
        _register_fields(cls)
        _MESSAGES[(tag, version)] = cls
        return cls

    return wrap


def message_types() -> tuple[type[Message], ...]:
    """Every registered message class (for tests and tooling)."""
    return tuple(_MESSAGES.values())


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def _body(msg: Message) -> dict[str, Any]:
    plain = _to_plain(msg)
    assert isinstance(plain, dict)
    return plain


def encode(msg: Message) -> bytes:
    """Encode a registered message to msgpack bytes (no frame header)."""
    if (getattr(msg, "TYPE", None), getattr(msg, "VERSION", None)) not in _MESSAGES:
        raise TypeError(f"{type(msg).__name__} is not a registered wire message")
    try:
        return msgpack.packb(  # type: ignore[no-any-return]
            {"t": msg.TYPE, "v": msg.VERSION, "b": _body(msg)}, use_bin_type=True
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode {msg.TYPE!r}: {exc}") from None


def signable_bytes(msg: Message, *, exclude: str = "signature") -> bytes:
    """Canonical bytes of ``msg`` without its signature field: what a signer signs."""
    body = _body(msg)
    body.pop(exclude, None)
    return canonical_bytes({"t": msg.TYPE, "v": msg.VERSION, "b": body})


def decode(data: bytes, *, expect: type[_M] | None = None) -> Any:
    """Decode msgpack bytes into a registered message, validating every field.

    With ``expect``, anything that is not of that message class is a ``ProtocolError``.
    Decoded messages are shared between callers that decode the same bytes (a small cache:
    gossip delivers one message many times), so treat them as immutable.
    """
    if not isinstance(data, bytes):
        raise ProtocolError(f"expected bytes to decode, got {type(data).__name__}")
    msg = _decode_cached(data)
    if expect is not None and type(msg) is not expect:
        raise ProtocolError(f"expected a {expect.TYPE!r} message, got {msg.TYPE!r}")
    return msg


@functools.lru_cache(maxsize=4096)
def _decode_cached(data: bytes) -> Message:
    try:
        # msgpack >= 1.0 bounds every declared length by len(data), so a tiny input cannot
        # make it allocate a huge container
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises a zoo of types for malformed input
        raise ProtocolError(f"invalid msgpack: {type(exc).__name__}: {exc}") from None
    if type(obj) is not dict or set(obj) != {"t", "v", "b"}:
        _fail("message", "a map with keys t, v, b", obj)
    tag, version = obj["t"], obj["v"]
    if type(tag) is not str or type(version) is not int:
        _fail("message", "a string tag and integer version", (tag, version))
    cls = _MESSAGES.get((tag, version))
    if cls is None:
        raise ProtocolError(f"unknown message type {tag!r} version {version}")
    return _build(cls, obj["b"], tag)


@message("signed", 1)
@dataclass(frozen=True, slots=True)
class Signed(Message):
    """A signed envelope: ``body`` is an encoded message, signed as is by ``signer``.

    Signing the exact bytes (rather than a re-encoding) means a receiver verifies without
    canonicalising anything, and identical envelopes verify once.
    """

    signer: str
    body: bytes
    signature: bytes


def seal(msg: Message, identity: Identity) -> Signed:
    """Encode ``msg`` and sign the bytes with ``identity``."""
    body = encode(msg)
    return Signed(signer=identity.peer_id, body=body, signature=identity.sign(body))


def unseal(envelope: Signed, *, expect: type[_M] | None = None) -> Any:
    """Verify an envelope's signature and decode its body.

    Raises ``ProtocolError`` for a bad signature or a malformed body.
    """
    if not verify(envelope.signer, envelope.body, envelope.signature):
        raise ProtocolError(f"bad signature on a message claimed by {envelope.signer[-8:]}")
    return decode(envelope.body, expect=expect)


def encode_frame(payload: bytes, *, max_size: int = DEFAULT_MAX_FRAME) -> bytes:
    """Prefix ``payload`` with its 4-byte length; refuse payloads over ``max_size``."""
    if len(payload) > max_size:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds the limit of {max_size}")
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Incremental decoder of length-prefixed frames.

    Feed it bytes as they arrive with ``feed()``, then iterate ``frames()``. The declared
    length is checked against ``max_size`` as soon as the header is complete, before any
    payload is buffered. ``close()`` raises if the input ended in the middle of a frame.
    """

    def __init__(self, *, max_size: int = DEFAULT_MAX_FRAME) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._need: int | None = None

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buf += data
        if self._need is None and len(self._buf) >= _HEADER.size:
            self._check_header()

    def _check_header(self) -> None:
        (n,) = _HEADER.unpack_from(self._buf)
        if n > self.max_size:
            self._buf.clear()
            raise ProtocolError(f"frame of {n} bytes exceeds the limit of {self.max_size}")
        self._need = n

    def next_frame(self) -> bytes | None:
        """Return the next complete frame payload, or None if more bytes are needed."""
        if self._need is None:
            if len(self._buf) < _HEADER.size:
                return None
            self._check_header()
        assert self._need is not None
        end = _HEADER.size + self._need
        if len(self._buf) < end:
            return None
        payload = bytes(self._buf[_HEADER.size : end])
        del self._buf[:end]
        self._need = None
        return payload

    def frames(self) -> Iterator[bytes]:
        """Yield every complete frame buffered so far."""
        while (frame := self.next_frame()) is not None:
            yield frame

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a complete frame."""
        return len(self._buf)

    def close(self) -> None:
        """Declare end of input; raise ``ProtocolError`` if a frame was cut short."""
        if self._buf:
            raise ProtocolError(f"input ended inside a frame ({len(self._buf)} bytes pending)")
