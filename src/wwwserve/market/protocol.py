"""The probe and offload streams as sans-IO state machines (no network, no clock).

An offload stream carries, from the executor to the requester, in this order::

    ProbeReply(accept=False, reason)                         -> refused, nothing more
    ProbeReply(accept=True, model), Chunk*, [Signed receipt], end of stream

where the chunks run until one with a ``finish_reason`` (the answer is whole), an empty
chunk is a *keepalive* (the executor is at work but its answer is not moving), and the
optional receipt is the executor's signature over the answer
(``AnswerReceipt``). A probe stream carries one ``ProbeReply``.

Each side is a small class that turns what it is given into what it should do, the way h11
does for HTTP: ``RequesterStream`` takes the frames an executor sent and returns
events (``Accepted``, ``Refused``, ``Data``, ``Keepalive``,
``Receipt``, ``Ended``, ``Broken``); ``ExecutorStream`` takes the
executor's decisions and chunks and returns the bytes to send. The I/O shells
(``requester``, ``executor``) only move bytes and time.

States of the requester's side (``Phase``)::

    AWAIT_REPLY --accept--> STREAMING --final chunk--> AWAIT_END --end--> DONE
         |                      |                         |
       refuse/end              end                    receipt (once)
         v                      v
      REFUSED                 FAILED

Anything else (a frame that is not the expected message, a second receipt, a frame after
the end) is a ``ProtocolError`` and leaves the stream FAILED; a
stream that is over refuses every further input the same way. Misusing the executor's side
(a chunk before the decision, a keepalive after the answer) raises the same error: it is a
bug in the caller, never something a peer can cause.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from ..engines import Chunk, CompletionRequest, Usage, visible_text
from ..errors import ProtocolError
from ..evidence import AnswerReceipt
from ..identity import Identity
from ..wire import Signed, decode, encode, seal
from .messages import Offload, Probe, ProbeReply

__all__ = [
    "KEEPALIVE",
    "Accepted",
    "Broken",
    "Data",
    "Ended",
    "ExecutorStream",
    "Keepalive",
    "Phase",
    "ProbeExchange",
    "Receipt",
    "Refused",
    "RequesterStream",
    "offload_request",
    "probe_request",
]

#: what an executor sends while an accepted request is silent
KEEPALIVE = Chunk(text="")
_KEEPALIVE_BYTES = encode(KEEPALIVE)


class Phase(enum.Enum):
    """Where a stream is (see the module docs)."""

    AWAIT_REPLY = "await_reply"
    STREAMING = "streaming"
    AWAIT_END = "await_end"
    DONE = "done"
    REFUSED = "refused"
    FAILED = "failed"


#: phases after which a stream takes no more input
OVER = frozenset({Phase.DONE, Phase.REFUSED, Phase.FAILED})


@dataclass(frozen=True, slots=True)
class Accepted:
    """The executor took the request and will run it on ``model``."""

    model: str


@dataclass(frozen=True, slots=True)
class Refused:
    """The executor declined (``reason``: ``busy``, ``model``, ``credit``, ...; ``closed``:
    it ended the stream without a word). Nothing of an answer came."""

    reason: str


@dataclass(frozen=True, slots=True)
class Data:
    """A piece of the answer; ``usage`` is set on the last one (the answer is whole)."""

    chunk: Chunk
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class Keepalive:
    """The executor is at work; its answer is not moving yet."""


@dataclass(frozen=True, slots=True)
class Receipt:
    """The executor's signed receipt over its answer (the envelope's bytes)."""

    envelope: bytes


@dataclass(frozen=True, slots=True)
class Ended:
    """The stream ended after a whole answer."""


@dataclass(frozen=True, slots=True)
class Broken:
    """The stream ended before the answer was whole."""

    why: str


Event = Accepted | Refused | Data | Keepalive | Receipt | Ended | Broken


def probe_request(request: CompletionRequest, route: tuple[str, ...]) -> bytes:
    """The bytes that open a probe stream for ``request``."""
    return encode(Probe(request_id=request.request_id, model=request.model,
                        prompt_tokens=request.prompt_tokens(), max_tokens=request.planned_tokens,
                        route=route))


def offload_request(request: CompletionRequest, route: tuple[str, ...], sender: str, *,
                    offer: bool) -> bytes:
    """The bytes that open an offload stream: ``request`` from ``sender``, which it reached
    through ``route``; with ``offer`` the executor's accept policy decides."""
    return encode(Offload(request=encode(request), route=(*route, sender),
                          hops=len(route) + 1, offer=offer))


class RequesterStream:
    """The requester's side of one offload stream (see the module docs)."""

    __slots__ = ("phase", "usage")

    def __init__(self) -> None:
        self.phase = Phase.AWAIT_REPLY
        #: the answer's usage, once it is whole
        self.usage: Usage | None = None

    @property
    def whole(self) -> bool:
        """True once the answer's last chunk arrived (it counts, whatever follows)."""
        return self.usage is not None

    def _fail(self, why: str) -> ProtocolError:
        self.phase = Phase.FAILED
        return ProtocolError(why)

    def receive(self, frame: bytes) -> Event:
        """What one frame from the executor means; raises ``ProtocolError`` for a
        frame the protocol does not allow here."""
        phase = self.phase
        if phase in OVER:
            raise self._fail(f"a frame after the stream was {phase.value}")
        try:
            msg = decode(frame)
        except ProtocolError as exc:
            raise self._fail(str(exc)) from None
        if phase is Phase.AWAIT_REPLY:
            if not isinstance(msg, ProbeReply):
                raise self._fail(f"expected a probe-reply first, got {msg.TYPE!r}")
            if not msg.accept:
                self.phase = Phase.REFUSED
                return Refused(msg.reason or "busy")
            self.phase = Phase.STREAMING
            return Accepted(msg.model)
        if phase is Phase.STREAMING:
            if not isinstance(msg, Chunk):
                raise self._fail(f"unexpected {msg.TYPE!r} in an answer")
            if msg == KEEPALIVE:
                return Keepalive()
            if msg.finish_reason is None:
                return Data(msg)
            self.usage = msg.usage or Usage()
            self.phase = Phase.AWAIT_END
            return Data(msg, self.usage)
        # AWAIT_END: one receipt at most, then the end
        if not isinstance(msg, Signed):
            raise self._fail("more after the end of an answer")
        self.phase = Phase.DONE  # a receipt is the last frame; only the end may follow
        return Receipt(frame)

    def end(self) -> Event:
        """The executor ended the stream."""
        phase = self.phase
        if phase is Phase.AWAIT_REPLY:
            self.phase = Phase.REFUSED
            return Refused("closed")
        if phase is Phase.STREAMING:
            self.phase = Phase.FAILED
            return Broken("ended without finishing")
        if phase in (Phase.AWAIT_END, Phase.DONE):
            self.phase = Phase.DONE
            return Ended()
        raise self._fail(f"the end of a stream that was {phase.value}")


class ProbeExchange:
    """The requester's side of a probe stream: one reply, then nothing."""

    __slots__ = ("reply",)

    def __init__(self) -> None:
        self.reply: ProbeReply | None = None

    def receive(self, frame: bytes) -> ProbeReply:
        """The executor's reply; a second frame is a ``ProtocolError``."""
        if self.reply is not None:
            raise ProtocolError("more than one probe-reply")
        self.reply = decode(frame, expect=ProbeReply)
        return self.reply


class ExecutorStream:
    """The executor's side of one offload stream: decisions and chunks in, bytes out.

    ``refuse`` or ``accept`` first; then ``chunk`` (and ``keepalive`` while the answer is not
    moving) until the engine is done; then ``finish`` (with an identity: the signed receipt
    over the answer's text, else nothing).
    """

    __slots__ = ("_digest", "phase", "request_id", "requester")

    def __init__(self, requester: str, request_id: str) -> None:
        self.requester = requester
        self.request_id = request_id
        self.phase = Phase.AWAIT_REPLY
        self._digest = hashlib.sha256()

    def _expect(self, *phases: Phase) -> None:
        if self.phase not in phases:
            raise ProtocolError(f"not allowed while the stream is {self.phase.value}")

    def refuse(self, reason: str) -> bytes:
        """Decline the request (``reason``: ``busy``, ``model``, ``credit``, ...)."""
        self._expect(Phase.AWAIT_REPLY)
        self.phase = Phase.REFUSED
        return encode(ProbeReply(accept=False, reason=reason))

    def accept(self, model: str) -> bytes:
        """Take the request; it runs on ``model``."""
        self._expect(Phase.AWAIT_REPLY)
        self.phase = Phase.STREAMING
        return encode(ProbeReply(accept=True, model=model))

    def chunk(self, chunk: Chunk) -> bytes:
        """One chunk of the answer (the receipt covers what a user sees of it)."""
        self._expect(Phase.STREAMING)
        self._digest.update(visible_text(chunk).encode())
        if chunk.finish_reason is not None:
            self.phase = Phase.AWAIT_END
        return encode(chunk)

    def keepalive(self) -> bytes:
        """Say the executor is still at work on an answer that is not moving."""
        self._expect(Phase.STREAMING)
        return _KEEPALIVE_BYTES

    def finish(self, identity: Identity | None) -> bytes | None:
        """The engine is done: the receipt to send last (None without an identity)."""
        self._expect(Phase.STREAMING, Phase.AWAIT_END)
        self.phase = Phase.DONE
        if identity is None:
            return None
        receipt = AnswerReceipt(requester=self.requester, request_id=self.request_id,
                                digest=self._digest.digest())
        return encode(seal(receipt, identity))
