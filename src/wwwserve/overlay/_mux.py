"""Many requests over one long-lived byte stream per peer and direction.

Opening a libp2p stream costs a multistream-select negotiation (several round trips and
~8 ms in py-libp2p), so ``Libp2pOverlay`` keeps one stream per peer
and direction and multiplexes requests over it. Every frame is a length-prefixed
(``encode_frame()``) record::

    kind (1 byte) | request id (4 bytes, big-endian) | body

Requester to server: ``O`` opens request ``id`` (body: 2-byte protocol length, protocol
name, request payload); ``C`` cancels it. Server to requester: ``D`` data chunk, ``E`` end,
``X`` error (body: UTF-8 reason), the same codes as ``StreamCode``.

The module is written against ``ByteStream`` (read / write / close / reset), so the
protocol can be tested without a network.

**Memory a peer can hold.** A frame that has started must be complete within
``partial_timeout`` (else the stream is reset), and the bytes of unfinished frames held by
all streams that share a ``ReceiveBudget`` stay under its limit (a stream that would
pass it is reset). So a peer that opens streams and sends the first bytes of huge frames,
then nothing, holds at most the budget, for at most the timeout.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Protocol, Self

import trio

from ..errors import PeerUnavailableError, ProtocolError
from ..wire import FrameDecoder, encode_frame
from ._base import Handler, StreamCode, raise_for_frame, receive_with_idle_timeout

__all__ = ["MUX_PROTOCOL", "ByteStream", "MuxClient", "ReceiveBudget", "serve_mux_stream"]

logger = logging.getLogger(__name__)

MUX_PROTOCOL = "/wwwserve/mux/1.0.0"
HEADER = 5
OPEN, CANCEL = b"O", b"C"
DATA, END, ERROR = StreamCode.DATA.value, StreamCode.END.value, StreamCode.ERROR.value
_KINDS = frozenset((OPEN, CANCEL, DATA, END, ERROR))
READ_CHUNK = 64 * 1024
#: Frames buffered per request before the requester is deemed too slow and the request dropped.
RESPONSE_BUFFER = 1024
#: Requests one requester may have running on a server at once (more are refused).
MAX_INFLIGHT = 256
#: Seconds a frame may take from its first byte to its last.
PARTIAL_TIMEOUT = 30.0
#: Bytes of unfinished frames all streams of one overlay may hold together.
RECEIVE_BUDGET = 64 * 1024 * 1024


class ReceiveBudget:
    """Bytes held in unfinished frames by the streams that share it, under ``limit``."""

    def __init__(self, limit: int = RECEIVE_BUDGET) -> None:
        self.limit = limit
        self.held = 0
        #: streams reset because they would have passed the limit
        self.refused = 0

    def move(self, old: int, new: int) -> None:
        """A stream's holding goes from ``old`` to ``new`` bytes; raises
        ``ProtocolError`` (and holds ``old`` still) if that passes the limit."""
        if new > old and self.held - old + new > self.limit:
            self.refused += 1
            raise ProtocolError(f"unfinished frames would hold more than {self.limit} bytes")
        self.held += new - old


class _Receiver:
    """Reads frames from one stream within its budget and its partial-frame deadline.

    Call ``release()`` when done with the stream (it gives the budget back).
    """

    def __init__(self, stream: ByteStream, max_frame: int, budget: ReceiveBudget,
                 partial_timeout: float) -> None:
        self._stream = stream
        self._decoder = FrameDecoder(max_size=max_frame)
        self._budget = budget
        self._timeout = partial_timeout
        self._held = 0
        self._since = 0.0

    async def next_frame(self) -> bytes | None:
        """The next complete frame, or None when the stream ends; raises
        ``ProtocolError`` for bad framing, an exhausted budget or a frame not
        finished within the timeout."""
        while (frame := self._decoder.next_frame()) is None:
            if self._held:
                data: bytes | None = None
                with trio.move_on_at(self._since + self._timeout):
                    data = await _read(self._stream)
                if data is None:
                    raise ProtocolError(f"a frame was not finished within {self._timeout:g} s")
            else:
                data = await _read(self._stream)
            if not data:
                return None
            self._decoder.feed(data)
            self._account(started=not self._held)
        self._account(started=True)  # what is left begins the next frame
        return frame

    def _account(self, *, started: bool) -> None:
        held = self._decoder.buffered
        if held and started:
            self._since = trio.current_time()
        self._budget.move(self._held, held)
        self._held = held

    def release(self) -> None:
        """Give back what this stream holds of the budget."""
        self._budget.move(self._held, 0)
        self._held = 0


class ByteStream(Protocol):
    """The part of a libp2p stream the multiplexer needs."""

    async def read(self, n: int | None = -1) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...

    async def reset(self) -> None: ...


def encode_mux(kind: bytes, rid: int, body: bytes, max_size: int) -> bytes:
    """One framed multiplexer record (raises ProtocolError if over ``max_size``)."""
    return encode_frame(kind + rid.to_bytes(4, "big") + body, max_size=max_size)


def decode_mux(frame: bytes) -> tuple[bytes, int, bytes]:
    """Split a record into kind, request id and body (sans-IO)."""
    if len(frame) < HEADER:
        raise ProtocolError(f"multiplexer record of {len(frame)} bytes is too short")
    kind = frame[:1]
    if kind not in _KINDS:
        raise ProtocolError(f"unknown multiplexer record kind {kind!r}")
    return kind, int.from_bytes(frame[1:HEADER], "big"), frame[HEADER:]


def encode_open(protocol: str, payload: bytes) -> bytes:
    """Body of an OPEN record."""
    name = protocol.encode()
    if len(name) > 0xFFFF:
        raise ProtocolError("protocol name longer than 65535 bytes")
    return len(name).to_bytes(2, "big") + name + payload


def decode_open(body: bytes) -> tuple[str, bytes]:
    """Protocol name and payload of an OPEN record."""
    if len(body) < 2:
        raise ProtocolError("OPEN record without a protocol name")
    n = int.from_bytes(body[:2], "big")
    if len(body) < 2 + n:
        raise ProtocolError("OPEN record truncated inside the protocol name")
    try:
        name = body[2 : 2 + n].decode()
    except UnicodeDecodeError:
        raise ProtocolError("protocol name is not UTF-8") from None
    return name, body[2 + n :]


async def _read(stream: ByteStream) -> bytes:
    """Next bytes from ``stream``; b"" at EOF or on any stream failure."""
    try:
        return await stream.read(READ_CHUNK)
    except Exception as exc:  # StreamEOF, StreamReset, StreamClosed, muxer errors
        logger.debug("mux stream read ended: %r", exc)
        return b""


class _Writer:
    """Serialises whole records onto a stream (records never interleave)."""

    def __init__(self, stream: ByteStream, timeout: float) -> None:
        self._stream = stream
        self._lock = trio.Lock()
        self._timeout = timeout

    async def write(self, record: bytes) -> None:
        async with self._lock:
            with trio.fail_after(self._timeout):
                await self._stream.write(record)


class _CoalescingWriter:
    """A writer task that sends everything queued since its last write in one stream write.

    A handler's last chunk and the END record that follows it leave in one yamux frame (each
    frame costs a window update and a wake-up on both sides). ``write`` returns once the
    record is queued, waiting only while more than ``high_water`` bytes are unsent.
    """

    def __init__(self, stream: ByteStream, timeout: float, high_water: int = 256 * 1024):
        self._stream = stream
        self._timeout = timeout
        self._high_water = high_water
        self._queue: list[bytes] = []
        self._queued = 0
        self._wake = trio.Event()
        self._drained = trio.Event()
        self.failure: Exception | None = None

    async def write(self, record: bytes) -> None:
        if self.failure is not None:
            raise self.failure
        self._queue.append(record)
        self._queued += len(record)
        self._wake.set()
        while self._queued > self._high_water and self.failure is None:
            await self._drained.wait()
        if self.failure is not None:
            raise self.failure
        await trio.lowlevel.checkpoint_if_cancelled()  # no yield: let END join the last chunk

    async def run(self) -> None:
        """Flush queued records until cancelled or the stream fails."""
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                data = b"".join(self._queue)
                self._queue.clear()
                self._queued = 0
                with trio.fail_after(self._timeout):
                    await self._stream.write(data)
                self._drained.set()
                self._drained = trio.Event()
        except Exception as exc:
            self.failure = PeerUnavailableError(f"stream write failed: {type(exc).__name__}")
            self._drained.set()


# ---- requester side -------------------------------------------------------------------------
class _Response:
    """Async iterator over one request's DATA bodies (the overlay's ResponseStream)."""

    def __init__(self, client: MuxClient, rid: int, idle_timeout: float) -> None:
        self._client = client
        self.rid = rid
        self._idle = idle_timeout
        self.send, self._receive = trio.open_memory_channel[tuple[bytes, bytes]](RESPONSE_BUFFER)
        self.failure: Exception | None = None
        self.done = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        if self.done:
            raise StopAsyncIteration
        peer = self._client.peer
        try:
            try:
                kind, body = await receive_with_idle_timeout(
                    self._receive.receive, self._idle, peer)
            except trio.EndOfChannel:
                raise self.failure or PeerUnavailableError(
                    f"connection to peer {peer[-8:]} lost mid-request") from None
            data = raise_for_frame(StreamCode(kind), body, peer)
            if data is None:
                raise StopAsyncIteration
            return data
        except BaseException:
            self.done = True
            raise


class MuxClient:
    """The requester's end of one multiplexed stream to ``peer``.

    Start ``run()`` in a nursery; when it returns the stream is dead (``broken``) and every
    request still waiting on it fails with ``PeerUnavailableError``.
    """

    def __init__(
        self, stream: ByteStream, peer: str, *, max_frame: int, write_timeout: float,
        budget: ReceiveBudget | None = None, partial_timeout: float = PARTIAL_TIMEOUT,
    ) -> None:
        self.peer = peer
        self.max_frame = max_frame
        self._budget = budget if budget is not None else ReceiveBudget()
        self._partial_timeout = partial_timeout
        self._stream = stream
        self._writer = _Writer(stream, write_timeout)
        self._pending: dict[int, _Response] = {}
        self._next_id = 0
        self.broken = False

    async def run(self) -> None:
        """Read records and route them to their requests until the stream ends."""
        receiver = _Receiver(self._stream, self.max_frame, self._budget,
                             self._partial_timeout)
        why = "stream closed"
        try:
            while (frame := await receiver.next_frame()) is not None:
                kind, rid, body = decode_mux(frame)
                if kind in (OPEN, CANCEL):
                    raise ProtocolError(f"server sent a {kind!r} record")
                self._route(kind, rid, body)
        except ProtocolError as exc:
            why = str(exc)
            logger.debug("mux stream to %s: %s", self.peer, exc)
        finally:
            receiver.release()
            self.broken = True
            failure = PeerUnavailableError(f"connection to peer {self.peer[-8:]} lost: {why}")
            for resp in self._pending.values():
                resp.failure = failure
                resp.send.close()
            self._pending.clear()
            with trio.CancelScope(shield=True), trio.move_on_after(1), suppress(Exception):
                await self._stream.reset()

    def _route(self, kind: bytes, rid: int, body: bytes) -> None:
        resp = self._pending.get(rid)
        if resp is None:
            return  # a request we already gave up on
        try:
            resp.send.send_nowait((kind, body))
        except trio.WouldBlock:
            resp.failure = PeerUnavailableError(
                f"response from {self.peer[-8:]} dropped: reader too slow "
                f"({RESPONSE_BUFFER} chunks buffered)")
            resp.send.close()
            del self._pending[rid]
            return
        if kind != DATA:
            resp.send.close()
            del self._pending[rid]

    @asynccontextmanager
    async def request(
        self, protocol: str, payload: bytes, idle_timeout: float
    ) -> AsyncIterator[_Response]:
        """Send one request; yield its response stream; cancel it remotely if left early."""
        if self.broken:
            raise PeerUnavailableError(f"connection to peer {self.peer[-8:]} is closed")
        rid = (self._next_id + 1) & 0xFFFFFFFF
        record = encode_mux(OPEN, rid, encode_open(protocol, payload), self.max_frame)
        self._next_id = rid
        resp = _Response(self, rid, idle_timeout)
        self._pending[rid] = resp
        try:
            try:
                await self._writer.write(record)
            except trio.TooSlowError:
                raise PeerUnavailableError(f"sending to {self.peer[-8:]} timed out") from None
            except Exception as exc:
                raise PeerUnavailableError(
                    f"stream to {self.peer[-8:]} broke: {type(exc).__name__}") from None
            yield resp
        finally:
            finished = self._pending.pop(rid, None) is None
            if not finished and not self.broken:
                with trio.CancelScope(shield=True), trio.move_on_after(1), suppress(Exception):
                    await self._writer.write(encode_mux(CANCEL, rid, b"", self.max_frame))


# ---- server side ----------------------------------------------------------------------------
class _Sender:
    def __init__(self, writer: _CoalescingWriter, rid: int, max_frame: int) -> None:
        self._writer = writer
        self._rid = rid
        self._max_frame = max_frame

    async def send(self, chunk: bytes) -> None:
        record = encode_mux(DATA, self._rid, chunk, self._max_frame)
        try:
            await self._writer.write(record)
        except Exception as exc:
            raise PeerUnavailableError(f"requester went away: {type(exc).__name__}") from None


async def serve_mux_stream(
    stream: ByteStream,
    peer: str,
    lookup: Callable[[str], Handler | None],
    *,
    max_frame: int,
    write_timeout: float,
    max_inflight: int = MAX_INFLIGHT,
    budget: ReceiveBudget | None = None,
    partial_timeout: float = PARTIAL_TIMEOUT,
) -> None:
    """Serve requests arriving on one multiplexed stream until it ends.

    Each request runs its handler in its own task; a CANCEL record or the end of the stream
    cancels it. Handler exceptions become ERROR records; nothing a peer sends can raise out
    of here.
    """
    writer = _CoalescingWriter(stream, write_timeout)
    scopes: dict[int, trio.CancelScope] = {}

    async def answer(rid: int, kind: bytes, body: bytes) -> None:
        with suppress(Exception):
            await writer.write(encode_mux(kind, rid, body, max_frame))

    async def run_one(rid: int, protocol: str, payload: bytes, scope: trio.CancelScope) -> None:
        try:
            with scope:
                handler = lookup(protocol)
                if handler is None:
                    await answer(rid, ERROR, f"protocol {protocol} not supported".encode())
                    return
                try:
                    await handler(peer, payload, _Sender(writer, rid, max_frame))
                except PeerUnavailableError:
                    return  # the requester is gone; nobody to tell
                except Exception as exc:
                    logger.debug("handler for %s from %s failed: %r", protocol, peer, exc)
                    await answer(rid, ERROR, f"{type(exc).__name__}: {exc}".encode())
                    return
                await answer(rid, END, b"")
        finally:
            scopes.pop(rid, None)

    receiver = _Receiver(stream, max_frame, budget if budget is not None else ReceiveBudget(),
                         partial_timeout)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            try:
                while (frame := await receiver.next_frame()) is not None:
                    kind, rid, body = decode_mux(frame)
                    if kind == CANCEL:
                        if (scope := scopes.get(rid)) is not None:
                            scope.cancel()
                    elif kind != OPEN:
                        raise ProtocolError(f"requester sent a {kind!r} record")
                    elif rid in scopes:
                        raise ProtocolError(f"request id {rid} reused while running")
                    elif len(scopes) >= max_inflight:
                        nursery.start_soon(
                            answer, rid, ERROR,
                            f"too many concurrent requests (limit {max_inflight})".encode())
                    else:
                        protocol, payload = decode_open(body)
                        scopes[rid] = scope = trio.CancelScope()
                        nursery.start_soon(run_one, rid, protocol, payload, scope)
            except ProtocolError as exc:
                logger.debug("mux stream from %s: %s", peer, exc)
            nursery.cancel_scope.cancel()
    finally:
        receiver.release()
        with trio.CancelScope(shield=True), trio.move_on_after(1), suppress(Exception):
            await stream.reset()
