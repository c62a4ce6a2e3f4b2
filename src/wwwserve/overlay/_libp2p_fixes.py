"""Workarounds and guards for py-libp2p 0.8.1 (pinned: several touch its internals).

``libp2p`` is the adapter; this module holds everything that changes py-libp2p's own
behaviour, each with the reason and, where measured, the figure:

- bigger per-peer RPC queues and subscription buffers (the defaults of 32 drop messages
  silently);
- the signed peer record of every pubsub RPC reused for 10 s and verified once;
- Yamux receive credit released in batches of half a window;
- GossipSub meshes kept within their degree bounds (no opportunistic grafting);
- py-libp2p's logger routed through the application's logging;
- dialed sockets tracked so none outlives the overlay;
- **guards on every parser of a stranger's bytes** (``guard_host()``): py-libp2p runs
  its stream handlers (pubsub's RPC reader, identify, ping, ours) and pubsub's message
  tasks unguarded, so one malformed RPC (a length, then bytes that are no protobuf) made
  an exception escape the host's nursery and stop the process. Every inbound stream
  handler and every pubsub message task now runs under a guard: an exception that is not
  a cancellation ends that stream, the offending peer's connection is closed and the peer
  is refused for ``BAN_SECONDS``; the node goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from libp2p.pubsub import gossipsub as _gossipsub_module
from libp2p.pubsub import pubsub as _pubsub_module
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.stream_muxer.yamux import yamux as _yamux_module
from multiaddr import Multiaddr

from ..log import route_libp2p_logger

__all__ = [
    "BAN_SECONDS",
    "Offenders",
    "bounded_mesh",
    "close_leftovers",
    "guard_host",
    "patch_pubsub_queues",
    "track_dials",
]

logger = logging.getLogger(__name__)

RPC_QUEUE_SIZE = 4096


class _DeepRpcQueue(RpcQueue):
    """RpcQueue with room for bursts (the default of 32 RPCs drops messages silently)."""

    def __init__(self, max_size: int = RPC_QUEUE_SIZE, **kwargs: Any) -> None:
        super().__init__(max_size=max_size, **kwargs)


#: how long a host's own signed peer record is reused before its addresses are re-read
SPR_REUSE_S = 10.0
_spr_out: weakref.WeakKeyDictionary[Any, tuple[float, bytes]] = weakref.WeakKeyDictionary()
_spr_in: weakref.WeakKeyDictionary[Any, set[tuple[str, bytes]]] = weakref.WeakKeyDictionary()
_SPR_IN_MAX = 4096


def _env_to_send(host: Any) -> tuple[bytes, bool]:
    """py-libp2p's ``env_to_send_in_RPC``, re-reading the host's addresses every 10 s.

    py-libp2p 0.8.1 attaches its signed peer record to every pubsub RPC and, each time,
    rebuilds the host's multiaddrs to see whether the cached record is current: 14% of an
    idle node's CPU at 20 peers. Our hosts never change their listen addresses after start.
    """
    now = time.monotonic()
    hit = _spr_out.get(host)
    if hit is not None and now < hit[0]:
        return hit[1], False
    envelope, fresh = _orig_env_to_send(host)
    _spr_out[host] = (now + SPR_REUSE_S, envelope)
    return envelope, fresh


def _consume_record(msg: Any, host: Any, peer_id: Any) -> bool:
    """py-libp2p's ``maybe_consume_signed_record``, skipping records already verified.

    Every RPC carries the sender's signed peer record, and 0.8.1 verifies its Ed25519
    signature on each one (the largest single cost of receiving gossip). The same bytes
    from the same peer verify the same way, so an accepted record is remembered.
    """
    if not msg.HasField("senderRecord"):
        return True
    key = (str(peer_id), bytes(msg.senderRecord))
    seen = _spr_in.setdefault(host, set())
    if key in seen:
        return True
    ok = bool(_orig_consume_record(msg, host, peer_id))
    if ok:
        if len(seen) >= _SPR_IN_MAX:
            seen.clear()
        seen.add(key)
    return ok


_orig_env_to_send = getattr(_pubsub_module, "env_to_send_in_RPC")  # noqa: B009
_orig_consume_record = getattr(_pubsub_module, "maybe_consume_signed_record")  # noqa: B009


def patch_pubsub_queues(subscription_buffer: int) -> None:
    # Module-level knobs of py-libp2p 0.8.1: its pubsub queues are too shallow for a busy
    # node by default, and are set per module, not per host; idempotent.
    setattr(_pubsub_module, "RpcQueue", _DeepRpcQueue)  # noqa: B010
    _pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = subscription_buffer
    # per-RPC signed peer record costs (see _env_to_send and _consume_record)
    for module in (_pubsub_module, _gossipsub_module):
        setattr(module, "env_to_send_in_RPC", _env_to_send)  # noqa: B010
        setattr(module, "maybe_consume_signed_record", _consume_record)  # noqa: B010
    # Yamux: 0.8.1 answers every read with a WINDOW_UPDATE frame by default (an encrypted
    # write per gossip message received, 12% of an idle node's CPU at 10 peers); credit is
    # released in batches of half a window instead, as go-yamux does. The debug switch is
    # read from the environment on every frame. PY_YAMUX_* set by the user still win.
    if "PY_YAMUX_RELEASE_ON_READ" not in os.environ:
        setattr(_yamux_module, "_yamux_release_on_read", _false)  # noqa: B010
        # and its "partial slack" branch still answered every small read with an update
        _yamux_module.YamuxStream._auto_tune_and_send_window_update = (  # type: ignore[method-assign]
            _release_in_batches)
    if "PY_YAMUX_DEBUG" not in os.environ:
        setattr(_yamux_module, "_perf_yamux_debug_enabled", _false)  # noqa: B010


def _false() -> bool:
    return False


def bounded_mesh(router: GossipSub) -> None:
    """Keep each topic's mesh between ``degree_low`` and ``degree_high`` peers.

    py-libp2p 0.8.1 runs "opportunistic grafting" on every heartbeat (the GossipSub v1.1
    spec: every 60 heartbeats, 2 peers, only when the mesh's median score is low) and
    grafts every peer scoring at least half the median; with the equal scores of a healthy
    network that is every peer, so each mesh grows to ``degree_high`` or to all peers, and
    every message reaches each node once from every one of them. Measured at 10 nodes in
    one process: meshes of 8-9 peers instead of 3-8, and 10% of a core per idle node
    instead of 6.6%; at 14 nodes a joiner took 31 s to reach all instead of 7 s. Meshes
    still fill to ``degree`` from below, and peer scoring (penalties, graylisting) stays on.
    """
    def no_opportunistic_grafting(topic: str, peers_to_graft: Any) -> int:
        return 0

    setattr(router, "_perform_opportunistic_grafting", no_opportunistic_grafting)  # noqa: B010


async def _release_in_batches(self: Any, *, bytes_read: int = 0) -> None:
    """Yamux receive credit, go-yamux style: released once half a window was consumed.

    (py-libp2p 0.8.1's version sends a WINDOW_UPDATE frame, an encrypted write, after
    almost every read of a small message.) The window does not auto-grow: on loopback
    and LANs a 256 KiB window per stream is not the bottleneck.
    """
    async with self.window_lock:
        self._pending_recv_release += bytes_read
        pending = self._pending_recv_release
        if pending <= 0 or pending < self._grow_threshold():
            return
        self.recv_window += pending
        self._pending_recv_release = 0
    await self.send_window_update(pending, skip_lock=True)


def _tame_libp2p_logging() -> None:
    # py-libp2p logs routine events at ERROR (trap 9): route it through the application's
    # logging, quiet unless a level was asked for (wwwserve.log.setup_logging)
    quiet = logging.getLogger("libp2p").level in (logging.NOTSET, logging.WARNING)
    route_libp2p_logger(logging.CRITICAL if quiet else None)


_tame_libp2p_logging()


def track_dials(host: IHost) -> weakref.WeakSet[Any]:
    """Remember every raw connection ``host`` dials, so none outlives the overlay.

    Some of py-libp2p's paths (a connection given up on during shutdown or in a dial race)
    drop a dialed TCP socket without closing it; it is then closed, with a
    ``ResourceWarning``, only when garbage collected. The set lets the overlay close
    whatever is left once the host has stopped.
    """
    dialed: weakref.WeakSet[Any] = weakref.WeakSet()
    manager = getattr(host.get_network(), "transport_manager", None)
    for transport in manager.get_transports() if manager is not None else ():
        original = transport.dial

        async def dial(maddr: Multiaddr, _original: Any = original) -> Any:
            conn = await _original(maddr)
            dialed.add(conn)
            return conn

        transport.dial = dial
    return dialed


def close_leftovers(dialed: weakref.WeakSet[Any]) -> None:
    for conn in list(dialed):
        sock = getattr(getattr(getattr(conn, "stream", None), "stream", None), "socket", None)
        if sock is not None and sock.fileno() != -1:
            logger.debug("closing a connection py-libp2p left open: %s", sock)
            sock.close()


#: how long a peer whose bytes broke a parser is refused (seconds)
BAN_SECONDS = 300.0
#: offenders remembered at once (the oldest are forgotten first)
MAX_OFFENDERS = 4096


class Offenders:
    """Peers whose input broke one of the stack's parsers, refused for a while.

    Peer ids are free, so this only spares the node the cost of an offender that keeps
    coming back with the same key; the guard itself (a stream ended, a connection closed)
    is what keeps the node up. Bounded: at most ``MAX_OFFENDERS`` are remembered.
    """

    def __init__(self, *, ban_s: float = BAN_SECONDS, max_entries: int = MAX_OFFENDERS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ban_s = ban_s
        self.max_entries = max_entries
        self.clock = clock
        self._until: OrderedDict[str, float] = OrderedDict()
        #: offences seen, by where they happened (``stream:<protocol>``, ``pubsub-message``)
        self.counts: dict[str, int] = {}

    def record(self, peer: str, where: str) -> None:
        """Note an offence by ``peer``; it is refused for ``ban_s`` from now."""
        self.counts[where] = self.counts.get(where, 0) + 1
        self._until.pop(peer, None)
        self._until[peer] = self.clock() + self.ban_s
        while len(self._until) > self.max_entries:
            self._until.popitem(last=False)

    def banned(self, peer: str) -> bool:
        """True while ``peer`` is refused."""
        until = self._until.get(peer)
        if until is None:
            return False
        if until <= self.clock():
            del self._until[peer]
            return False
        return True


OnOffence = Callable[[ID, str, BaseException], None]


def guard_host(host: IHost, pubsub: Pubsub, on_offence: OnOffence) -> None:
    """Run every inbound stream handler and every pubsub message task of ``host`` under a
    guard (see the module docs). ``on_offence(peer, where, exc)`` is told of each offence
    (it closes the connection); cancellation passes through untouched."""
    network: Any = host.get_network()
    inner: Callable[[INetStream], Awaitable[None]] = network.common_stream_handler

    async def guarded_stream(stream: INetStream) -> None:
        try:
            await inner(stream)
        except Exception as exc:  # not a cancellation: the peer's bytes broke a parser
            protocol = _protocol_of(stream)
            peer = stream.muxed_conn.peer_id
            with trio.CancelScope(shield=True), trio.move_on_after(1), \
                    contextlib.suppress(Exception):
                await stream.reset()
            on_offence(peer, f"stream:{protocol}", exc)

    network.set_stream_handler(guarded_stream)
    push = pubsub.push_msg

    async def guarded_push(forwarder: ID, msg: Any) -> None:
        try:
            await push(forwarder, msg)
        except Exception as exc:  # a message pubsub could not handle; never its service
            on_offence(forwarder, "pubsub-message", exc)

    setattr(pubsub, "push_msg", guarded_push)  # noqa: B010


def _protocol_of(stream: INetStream) -> str:
    try:
        return str(stream.get_protocol() or "?")
    except Exception:
        return "?"
