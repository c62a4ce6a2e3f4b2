"""The Overlay interface: what node logic needs from a peer-to-peer network.

Two implementations satisfy it: ``Libp2pOverlay`` (the real network)
and ``MemoryOverlay`` (in-process, deterministic in virtual time, with
fault injection). One conformance suite (``tests/overlay_conformance.py``) runs against both.

Payloads are bytes; message encoding belongs to the protocols above (see ``wwwserve.wire``).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, Self, TypeVar, runtime_checkable

import trio

from ..errors import PeerUnavailableError, RemoteError

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "GossipMessage",
    "Handler",
    "Overlay",
    "PeerEvent",
    "PeerEventKind",
    "ResponseSender",
    "ResponseStream",
    "StreamCode",
    "Validator",
    "peer_id_of",
    "run_validator",
]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_IDLE_TIMEOUT = 60.0
"""Seconds a requester waits for the next response chunk before giving up on the peer."""


@dataclass(frozen=True, slots=True)
class GossipMessage:
    """A message received on a pub/sub topic. ``source`` is the original publisher's peer ID."""

    topic: str
    data: bytes
    source: str


class PeerEventKind(enum.Enum):
    """Kinds of ``PeerEvent``."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True, slots=True)
class PeerEvent:
    """A direct connection to ``peer_id`` was opened or closed."""

    kind: PeerEventKind
    peer_id: str


class ResponseSender(Protocol):
    """Given to a request handler to stream response chunks back to the requester."""

    async def send(self, chunk: bytes) -> None:
        """Send one response chunk; raises ``PeerUnavailableError`` if the requester left."""
        ...


Validator = Callable[[bytes], bool]
"""A gossip validator: cheap, stateless checks of a message's bytes (decoding, signatures)."""


def run_validator(validate: Validator, data: bytes) -> bool:
    """``validate(data)``, with anything it raises counted as a rejection."""
    try:
        return bool(validate(data))
    except Exception as exc:
        logger.debug("gossip validator raised %r; message rejected", exc)
        return False


Handler = Callable[[str, bytes, ResponseSender], Awaitable[None]]
"""A request handler: ``await handler(requester_peer_id, request_bytes, sender)``.

The handler streams zero or more chunks with ``sender.send``; returning ends the response
normally. If it raises, the requester gets a ``RemoteError`` carrying the message (the
handler's own exception never escapes into the overlay).
"""


class ResponseStream(Protocol):
    """Response chunks of one request, as an async iterator of bytes.

    Iteration raises ``PeerUnavailableError`` if the stream breaks, the peer vanishes or
    no chunk arrives within the idle timeout, and ``RemoteError`` if the handler failed.
    It ends normally only when the handler finished.
    """

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def __anext__(self) -> bytes: ...


@runtime_checkable
class Overlay(Protocol):
    """A node's view of the peer-to-peer network.

    Use as ``async with overlay:``: entering starts listening, leaving shuts down cleanly (no
    listener, connection or task survives).
    """

    @property
    def peer_id(self) -> str:
        """This node's peer ID."""
        ...

    @property
    def addresses(self) -> tuple[str, ...]:
        """Addresses peers can dial, each ending in ``/p2p/<peer id>``."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> bool | None: ...

    async def connect(self, address: str) -> str:
        """Dial ``address`` (ending in ``/p2p/<peer id>``); return the peer ID reached."""
        ...

    def add_peer_addresses(self, peer_id: str, addresses: tuple[str, ...]) -> None:
        """Remember how to reach ``peer_id``, so ``request()`` can dial it on demand."""
        ...

    def connected_peers(self) -> frozenset[str]:
        """Peers with an open direct connection now."""
        ...

    async def publish(self, topic: str, data: bytes) -> None:
        """Publish ``data`` on ``topic`` (best effort, like GossipSub)."""
        ...

    def subscribe(
        self, topic: str, *, validate: Validator | None = None
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[GossipMessage]]:
        """Receive messages published on ``topic`` by others while the context is open.

        With ``validate``, a message it rejects (returns False or raises) is not delivered
        here, and on libp2p this node does not relay it either. A topic has one validator
        per node: the last one given.
        """
        ...

    def serve(self, protocol: str, handler: Handler) -> None:
        """Answer requests for ``protocol`` (e.g. ``/wwwserve/offload/2.0.0``) with ``handler``."""
        ...

    def request(
        self,
        peer_id: str,
        protocol: str,
        payload: bytes,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> AbstractAsyncContextManager[ResponseStream]:
        """Send one request and stream back the response chunks.

        Leaving the context early cancels the request on the peer's side.
        """
        ...

    def peer_events(self) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[PeerEvent]]:
        """Receive a ``PeerEvent`` per connection opened or closed while open."""
        ...


def fan_out(sinks: list[trio.MemorySendChannel[_T]], item: _T) -> int:
    """Offer ``item`` to every sink without blocking; return how many were full.

    A full sink drops the item (like GossipSub's buffers); a closed one is skipped.
    """
    full = 0
    for sink in list(sinks):
        try:
            sink.send_nowait(item)
        except trio.WouldBlock:
            full += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    return full


def peer_id_of(address: str) -> str:
    """The peer ID at the end of a ``.../p2p/<peer id>`` address."""
    _head, sep, pid = address.rpartition("/p2p/")
    if not sep or not pid or "/" in pid:
        raise ValueError(f"address must end with /p2p/<peer id>: {address!r}")
    return pid


class StreamCode(bytes, enum.Enum):
    """First byte of every frame a request handler's side sends back."""

    DATA = b"D"
    END = b"E"
    ERROR = b"X"


def raise_for_frame(code: StreamCode, body: bytes, peer_id: str) -> bytes | None:
    """Return a DATA body, None at END; raise ``RemoteError`` for ERROR."""
    if code is StreamCode.DATA:
        return body
    if code is StreamCode.END:
        return None
    raise RemoteError(f"peer {peer_id[-8:]}: {body.decode('utf-8', 'replace')[:500]}")


async def receive_with_idle_timeout(
    receive: Callable[[], Awaitable[_T]], idle_timeout: float, peer_id: str
) -> _T:
    """Await ``receive()``, mapping a timeout to ``PeerUnavailableError``."""
    with trio.move_on_after(idle_timeout):
        return await receive()
    raise PeerUnavailableError(
        f"peer {peer_id[-8:]} sent nothing for {idle_timeout:g} s; giving up on the request"
    )
