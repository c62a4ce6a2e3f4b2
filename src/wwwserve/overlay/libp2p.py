"""Libp2pOverlay: the real overlay on py-libp2p 0.8.1 (TCP, Noise, Yamux, GossipSub).

This is the only module of wwwserve that imports libp2p. It applies the workarounds listed in
LIBP2P_NOTES.md: Noise and Yamux only, one connection per peer (no 250 ms dial stall), a 1 s
GossipSub heartbeat with spam and eclipse protection off (all loopback peers share one IP),
bigger per-peer RPC queues and subscription buffers, guarded stream handlers and topic
validators, a deadline on every network wait, unblocking peers stuck in the dial back-off
cache, and a shutdown that closes connections and the host *before* the pubsub services stop.
Beyond those notes: Yamux receive credit is released in batches of half a window (0.8.1
writes a WINDOW_UPDATE frame after nearly every read), the signed peer record of every
pubsub RPC is reused for 10 s and verified once, GossipSub v1.2's IDONTWANT is off, and
GossipSub meshes stay within their degree bounds (0.8.1's per-heartbeat opportunistic
grafting fills every mesh with every peer).

Requests are multiplexed over one long-lived libp2p stream per peer and direction
(:mod:`._mux`): opening a stream per request costs a multistream-select negotiation, several
times the round trip itself.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, suppress
from typing import Any, Self

import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub import gossipsub as _gossipsub_module
from libp2p.pubsub import pubsub as _pubsub_module
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux import yamux as _yamux_module
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from ..errors import ClosedError, PeerUnavailableError, ProtocolError, RemoteError
from ..identity import Identity
from ..log import route_libp2p_logger
from ..wire import DEFAULT_MAX_FRAME
from ._base import (
    DEFAULT_IDLE_TIMEOUT,
    GossipMessage,
    Handler,
    PeerEvent,
    PeerEventKind,
    ResponseStream,
    Validator,
    fan_out,
    peer_id_of,
    run_validator,
)
from ._mux import MUX_PROTOCOL, MuxClient, serve_mux_stream
from .memory import EVENT_BUFFER, MAX_GOSSIP_SIZE, SUBSCRIPTION_BUFFER, _sink_context

__all__ = ["Libp2pOverlay"]

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


def _patch_pubsub_queues() -> None:
    # Module-level knobs of py-libp2p 0.8.1 (see LIBP2P_NOTES.md, trap 5); idempotent.
    setattr(_pubsub_module, "RpcQueue", _DeepRpcQueue)  # noqa: B010
    _pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = SUBSCRIPTION_BUFFER
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


def _bounded_mesh(router: GossipSub) -> None:
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


def _track_dials(host: IHost) -> weakref.WeakSet[Any]:
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


def _close_leftovers(dialed: weakref.WeakSet[Any]) -> None:
    for conn in list(dialed):
        sock = getattr(getattr(getattr(conn, "stream", None), "stream", None), "socket", None)
        if sock is not None and sock.fileno() != -1:
            logger.debug("closing a connection py-libp2p left open: %s", sock)
            sock.close()


def _keypair(identity: Identity) -> KeyPair:
    private = deserialize_private_key(identity.to_libp2p_bytes())
    return KeyPair(private, private.get_public_key())


def _map_dial_error(exc: BaseException, peer: str) -> PeerUnavailableError:
    return PeerUnavailableError(f"cannot reach peer {peer[-8:]}: {type(exc).__name__}: {exc}")


class _Notifee(INotifee):
    """Turns swarm connection callbacks into :class:`PeerEvent` (one per peer, not per conn)."""

    def __init__(self, overlay: Libp2pOverlay) -> None:
        self._overlay = overlay

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        if len(network.get_connections(peer)) <= 1:
            self._overlay._emit(PeerEvent(PeerEventKind.CONNECTED, peer.to_base58()))

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        if not network.get_connections(peer):
            self._overlay._emit(PeerEvent(PeerEventKind.DISCONNECTED, peer.to_base58()))

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        pass


class Libp2pOverlay:
    """One node's overlay on py-libp2p (see :class:`~wwwserve.overlay.Overlay`).

    ``listen`` takes multiaddrs such as ``/ip4/127.0.0.1/tcp/0`` (port 0 picks a free port).
    ``gossip_degree`` is GossipSub's D: each topic's mesh keeps between D - 1 and 2 D peers
    (4: 3 to 8). Every gossip message reaches a node about once per mesh peer, so D sets
    the CPU an idle node spends on gossip.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",),
        max_frame: int = DEFAULT_MAX_FRAME,
        dial_timeout: float = 5.0,
        request_timeout: float = 10.0,
        gossip_degree: int = 4,
        gossip_heartbeat: float = 1.0,
        shutdown_timeout: float = 5.0,
    ) -> None:
        self.identity = identity
        self.listen = listen
        self.max_frame = max_frame
        self.dial_timeout = dial_timeout
        self.request_timeout = request_timeout
        self.gossip_degree = gossip_degree
        self.gossip_heartbeat = gossip_heartbeat
        self.shutdown_timeout = shutdown_timeout
        self._subs: dict[str, list[trio.MemorySendChannel[GossipMessage]]] = {}
        self._pubsub_topics: set[str] = set()
        self._event_sinks: list[trio.MemorySendChannel[PeerEvent]] = []
        self._handlers: dict[str, Handler] = {}
        self._validators: dict[str, Validator] = {}
        #: gossip messages a topic validator rejected (not delivered, not relayed)
        self.gossip_rejected = 0
        self._clients: dict[str, MuxClient] = {}
        self._client_locks: dict[str, trio.Lock] = {}
        self._open = False
        self._host: IHost | None = None

    # ---- properties ---------------------------------------------------------------------
    @property
    def peer_id(self) -> str:
        """This node's peer ID."""
        return self.identity.peer_id

    @property
    def addresses(self) -> tuple[str, ...]:
        """Listen addresses with ``/p2p/<peer id>`` (actual ports once started)."""
        if self._host is None:
            return ()
        return tuple(str(a) for a in self._host.get_addrs())

    @property
    def host(self) -> IHost:
        """The underlying libp2p host (escape hatch; avoid in protocol code)."""
        if self._host is None:
            raise ClosedError("overlay is not running")
        return self._host

    # ---- lifecycle ----------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self._stack = AsyncExitStack()
        await self._stack.enter_async_context(self._lifetime())
        return self

    async def __aexit__(self, *exc_info: object) -> bool | None:
        return await self._stack.__aexit__(*exc_info)  # type: ignore[arg-type]

    @asynccontextmanager
    async def _lifetime(self) -> AsyncIterator[None]:
        _patch_pubsub_queues()
        kp = _keypair(self.identity)
        host = new_host(
            key_pair=kp,
            sec_opt={NOISE_PROTOCOL_ID: NoiseTransport(
                kp, noise_privkey=new_x25519_key_pair().private_key)},
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
            # one connection per peer (no 250 ms dial stall); membership keeps the degree,
            # so libp2p's auto-connector (which dials every peerstore entry) stays off
            connection_config=ConnectionConfig(
                max_connections_per_peer=1, min_connections=0, low_watermark=0
            ),
        )
        gossipsub = GossipSub(
            # GossipSub v1.1, not v1.2: py-libp2p 0.8.1 answers every received message with
            # a separate IDONTWANT RPC to each mesh peer (70% of all RPCs at 20 nodes), which
            # costs more than it saves for our ~1 KB messages; measured: ~4x the publish
            # throughput per CPU core without it
            protocols=[PROTOCOL_ID_V11, PROTOCOL_ID],
            degree=self.gossip_degree,
            degree_low=max(1, self.gossip_degree - 1),
            degree_high=self.gossip_degree * 2,
            heartbeat_initial_delay=0.1,
            heartbeat_interval=self.gossip_heartbeat,  # type: ignore[arg-type]
            spam_protection_enabled=False,
            eclipse_protection_enabled=False,
            adaptive_gossip_enabled=False,
        )
        _bounded_mesh(gossipsub)
        pubsub = Pubsub(host, gossipsub, strict_signing=True)
        self._pubsub = pubsub
        try:
            listen = [Multiaddr(a) for a in self.listen]
        except Exception as exc:
            raise PeerUnavailableError(f"invalid listen address {self.listen}: {exc}") from None
        dialed = _track_dials(host)
        try:
            async with host.run(listen):
                self._host = host
                async with background_trio_service(pubsub), background_trio_service(gossipsub):
                    with trio.fail_after(10):
                        await pubsub.wait_until_ready()
                    host.get_network().register_notifee(_Notifee(self))
                    try:
                        async with trio.open_nursery() as nursery:
                            self._nursery = nursery
                            self._open = True
                            host.set_stream_handler(TProtocol(MUX_PROTOCOL), self._on_mux_stream)
                            try:
                                yield
                            finally:
                                self._open = False
                                nursery.cancel_scope.cancel()
                    finally:
                        self._open = False
                        with trio.CancelScope(shield=True), trio.move_on_after(
                            self.shutdown_timeout
                        ):
                            await self._close_host(host)
                        for sinks in self._subs.values():
                            for sink in sinks:
                                sink.close()
                        for ev_sink in self._event_sinks:
                            ev_sink.close()
                self._host = None
        finally:
            _close_leftovers(dialed)

    async def _drain_gossip(self, limit: float = 0.5) -> None:
        """Let queued gossip (a goodbye, say) leave before connections close (bounded)."""
        queues = getattr(self._pubsub, "peer_queues", {})
        with trio.move_on_after(limit):
            # py-libp2p offers no "queue drained" event to wait on, so poll, briefly
            while any(len(q) for q in list(queues.values())):  # noqa: ASYNC110
                await trio.sleep(0.01)
            await trio.sleep(0.02)  # the sender task may still be writing its last RPC

    async def _close_host(self, host: IHost) -> None:
        await self._drain_gossip()
        net = host.get_network()
        peers = list(net.get_connections_map())

        async def close_one(pid: ID) -> None:
            try:
                await net.close_peer(pid)
            except Exception as exc:
                logger.debug("closing connection to %s failed: %r", pid, exc)

        async with trio.open_nursery() as n:
            for pid in peers:
                n.start_soon(close_one, pid)
        try:
            await host.close()
        except Exception as exc:
            logger.debug("host close failed: %r", exc)

    def _check_open(self) -> None:
        if not self._open or self._host is None:
            raise ClosedError("overlay is not running (use `async with overlay:`)")

    def _emit(self, event: PeerEvent) -> None:
        fan_out(self._event_sinks, event)

    # ---- connections --------------------------------------------------------------------
    async def connect(self, address: str) -> str:
        """Dial ``address`` (``/ip4/.../tcp/.../p2p/<peer id>``) within ``dial_timeout``."""
        self._check_open()
        try:
            pid_text = peer_id_of(address)
            info = info_from_p2p_addr(Multiaddr(address))
        except Exception as exc:
            raise PeerUnavailableError(f"invalid peer address {address!r}: {exc}") from None
        if pid_text == self.peer_id:
            raise PeerUnavailableError("cannot dial ourselves")
        host = self.host
        self._unblock(info.peer_id)
        try:
            with trio.fail_after(self.dial_timeout):
                await host.connect(info)
        except trio.TooSlowError:
            raise PeerUnavailableError(
                f"dialing {address} timed out after {self.dial_timeout:g} s"
            ) from None
        except Exception as exc:
            raise _map_dial_error(exc, pid_text) from None
        return pid_text

    def _unblock(self, pid: ID) -> None:
        # a failed dial parks the peer in a 60 s back-off cache (LIBP2P_NOTES, trap 8)
        net: Any = self.host.get_network()
        unblock = getattr(net, "unblock_peer", None)
        if unblock is not None:
            with suppress(Exception):
                unblock(pid)

    def add_peer_addresses(self, peer_id: str, addresses: tuple[str, ...]) -> None:
        """Put a peer's addresses in the peerstore so requests can dial it."""
        if self._host is None or peer_id == self.peer_id:
            return
        try:
            pid = ID.from_base58(peer_id)
            addrs = [info_from_p2p_addr(Multiaddr(a)).addrs[0] for a in addresses]
        except Exception as exc:
            logger.debug("ignoring bad addresses for %s: %r", peer_id, exc)
            return
        self._host.get_peerstore().add_addrs(pid, addrs, 3600)

    def connected_peers(self) -> frozenset[str]:
        """Peers with an open connection now."""
        if self._host is None:
            return frozenset()
        net = self._host.get_network()
        return frozenset(p.to_base58() for p, conns in net.get_connections_map().items() if conns)

    async def disconnect(self, peer_id: str) -> None:
        """Close every connection to ``peer_id``."""
        self._check_open()
        try:
            await self.host.disconnect(ID.from_base58(peer_id))
        except Exception as exc:
            logger.debug("disconnect from %s failed: %r", peer_id, exc)

    def peer_events(self) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[PeerEvent]]:
        """Connection events while the context is open."""
        return _sink_context(self._event_sinks, EVENT_BUFFER)

    # ---- gossip -------------------------------------------------------------------------
    async def publish(self, topic: str, data: bytes) -> None:
        """Publish on a GossipSub topic (best effort; refuses oversized payloads)."""
        self._check_open()
        if len(data) > MAX_GOSSIP_SIZE:
            raise ProtocolError(
                f"gossip message of {len(data)} bytes exceeds the limit of {MAX_GOSSIP_SIZE}"
            )
        try:
            await self._pubsub.publish(topic, bytes(data))
        except Exception as exc:
            logger.warning("publish on %s failed: %r", topic, exc)

    @asynccontextmanager
    async def subscribe(
        self, topic: str, *, validate: Validator | None = None
    ) -> AsyncIterator[trio.MemoryReceiveChannel[GossipMessage]]:
        """Messages on ``topic`` from other nodes while the context is open."""
        self._check_open()
        if validate is not None:
            self._validators[topic] = validate
        if topic not in self._pubsub_topics:
            self._pubsub_topics.add(topic)
            self._pubsub.set_topic_validator(topic, self._topic_validator(topic), False)
            sub = await self._pubsub.subscribe(topic)
            self._nursery.start_soon(self._read_topic, topic, sub)
        async with _sink_context(self._subs.setdefault(topic, []), SUBSCRIPTION_BUFFER) as ch:
            yield ch

    def _topic_validator(self, topic: str) -> Any:
        """GossipSub's validator for ``topic``: the application's, made unable to raise
        (a raising validator would crash Pubsub, trap 4); no validator accepts all."""

        def check(peer_id: ID, msg: Any) -> bool:
            validate = self._validators.get(topic)
            if validate is None:
                return True
            ok = run_validator(validate, bytes(getattr(msg, "data", b"")))
            if not ok:
                self.gossip_rejected += 1
            return ok

        return check

    async def _read_topic(self, topic: str, sub: Any) -> None:
        while True:
            try:
                msg = await sub.get()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            try:
                source = ID(msg.from_id).to_base58()
            except Exception:
                continue
            if source == self.peer_id:
                continue
            gm = GossipMessage(topic, bytes(msg.data), source)
            fan_out(self._subs.get(topic, []), gm)

    # ---- request / response -------------------------------------------------------------
    def serve(self, protocol: str, handler: Handler) -> None:
        """Answer requests for ``protocol`` with ``handler`` (guarded: it can never crash
        the host)."""
        self._handlers[protocol] = handler

    async def _on_mux_stream(self, stream: INetStream) -> None:
        try:
            peer = stream.muxed_conn.peer_id.to_base58()
            await serve_mux_stream(
                stream, peer, self._handlers.get,
                max_frame=self.max_frame, write_timeout=self.request_timeout)
        except Exception as exc:  # never let a peer's stream take the host down
            logger.debug("mux stream handler aborted: %r", exc)

    async def _client(self, peer_id: str, pid: ID) -> MuxClient:
        client = self._clients.get(peer_id)
        if client is not None and not client.broken:
            return client
        async with self._client_locks.setdefault(peer_id, trio.Lock()):
            client = self._clients.get(peer_id)
            if client is not None and not client.broken:
                return client
            self._unblock(pid)
            try:
                with trio.fail_after(self.dial_timeout):
                    stream = await self.host.new_stream(pid, [TProtocol(MUX_PROTOCOL)])
            except trio.TooSlowError:
                raise PeerUnavailableError(
                    f"opening a stream to {peer_id[-8:]} timed out after {self.dial_timeout:g} s"
                ) from None
            except Exception as exc:
                connected = pid in self.host.get_network().get_connections_map()
                if type(exc).__name__ == "StreamFailure" and connected:
                    raise RemoteError(
                        f"peer {peer_id[-8:]}: protocol {MUX_PROTOCOL} not supported"
                    ) from None
                raise _map_dial_error(exc, peer_id) from None
            client = MuxClient(
                stream, peer_id, max_frame=self.max_frame, write_timeout=self.request_timeout)
            self._clients[peer_id] = client
            self._nursery.start_soon(self._run_client, client)
            return client

    async def _run_client(self, client: MuxClient) -> None:
        try:
            await client.run()
        finally:
            if self._clients.get(client.peer) is client:
                del self._clients[client.peer]
                lock = self._client_locks.get(client.peer)
                if lock is not None and not lock.locked():
                    del self._client_locks[client.peer]  # no per-peer state outlives the peer

    @asynccontextmanager
    async def request(
        self,
        peer_id: str,
        protocol: str,
        payload: bytes,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> AsyncIterator[ResponseStream]:
        """Send a request to ``peer_id`` over its multiplexed stream; stream back the answer."""
        self._check_open()
        try:
            pid = ID.from_base58(peer_id)
        except Exception:
            raise PeerUnavailableError(f"invalid peer id {peer_id!r}") from None
        client = await self._client(peer_id, pid)
        async with client.request(protocol, payload, idle_timeout) as response:
            yield response



