"""Libp2pOverlay: the real overlay on py-libp2p 0.8.1 (TCP, Noise, Yamux, GossipSub).

This is the only module of wwwserve (with ``_libp2p_fixes``, which holds the changes to
py-libp2p's own behaviour) that imports libp2p. The adapter: Noise and Yamux only, one
connection per peer (no 250 ms dial stall), a 1 s GossipSub heartbeat with spam and
eclipse protection off (all loopback peers share one IP), guarded stream handlers and
topic validators, a deadline on every network wait, unblocking peers stuck in the dial
back-off cache, and a shutdown that closes connections and the host *before* the pubsub
services stop.

**Untrusted bytes.** Every inbound stream handler of the host (pubsub's RPC reader,
identify, ping, the request multiplexer) and every pubsub message task runs under a
guard (``_libp2p_fixes.guard_host()``): input that breaks a parser ends that stream,
closes the offender's connection and refuses it for a while; the node goes on. Every
topic has a validator (a subscriber without its own gets one that drops what is empty or
oversized), so nothing undecodable is relayed by a node that cannot read it.

Requests are multiplexed over one long-lived libp2p stream per peer and direction
(``_mux``): opening a stream per request costs a multistream-select negotiation, several
times the round trip itself.
"""

from __future__ import annotations

import logging
import time
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
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from ..errors import ClosedError, PeerUnavailableError, ProtocolError, RemoteError
from ..identity import Identity
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
from ._libp2p_fixes import (
    Offenders,
    bounded_mesh,
    close_leftovers,
    guard_host,
    patch_pubsub_queues,
    track_dials,
)
from ._mux import MUX_PROTOCOL, MuxClient, ReceiveBudget, serve_mux_stream
from .memory import EVENT_BUFFER, MAX_GOSSIP_SIZE, SUBSCRIPTION_BUFFER, _sink_context

__all__ = ["Libp2pOverlay"]

logger = logging.getLogger(__name__)

#: connections of offenders waiting to be closed (more are dropped: they are being closed)
OFFENDER_QUEUE = 256
#: request streams one peer may have open towards us at once (a well-behaved one has one)
MAX_MUX_STREAMS_PER_PEER = 4
#: request streams all peers together may have open towards us
MAX_MUX_STREAMS = 1024
def _keypair(identity: Identity) -> KeyPair:
    private = deserialize_private_key(identity.to_libp2p_bytes())
    return KeyPair(private, private.get_public_key())


def _map_dial_error(exc: BaseException, peer: str) -> PeerUnavailableError:
    return PeerUnavailableError(f"cannot reach peer {peer[-8:]}: {type(exc).__name__}: {exc}")


class _Notifee(INotifee):
    """Turns swarm connection callbacks into ``PeerEvent`` (one per peer, not per conn)."""

    def __init__(self, overlay: Libp2pOverlay) -> None:
        self._overlay = overlay

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        if self._overlay.offenders.banned(peer.to_base58()):
            self._overlay._drop(peer)
            return
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
    """One node's overlay on py-libp2p (see ``Overlay``).

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
        #: peers whose bytes broke a parser of the stack (refused for a while)
        self.offenders = Offenders(clock=trio.current_time)
        self._drop_send, self._drop_receive = trio.open_memory_channel[ID](OFFENDER_QUEUE)
        #: bytes of unfinished frames that peers' request streams (in) and the answers to
        #: ours (out) may hold, each side in all (see ``_mux``)
        self.receive_budget_in = ReceiveBudget()
        self.receive_budget_out = ReceiveBudget()
        self._mux_streams: dict[str, int] = {}
        #: request streams refused (over the per-peer or total limit)
        self.mux_streams_refused = 0
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
        patch_pubsub_queues(SUBSCRIPTION_BUFFER)
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
        bounded_mesh(gossipsub)
        pubsub = Pubsub(host, gossipsub, strict_signing=True)
        # py-libp2p starts the sequence numbers at int(time.time()) and names a message by
        # sender and sequence number (remembered 120 s): a node that published more than
        # one message a second, restarted, reused names its peers had seen, and they
        # dropped its heartbeats for up to a minute. Nanoseconds stay ahead of any earlier
        # start (nobody publishes a billion messages a second), and fit the uint64
        pubsub.counter = time.time_ns()
        self._pubsub = pubsub
        guard_host(host, pubsub, self._offence)
        try:
            listen = [Multiaddr(a) for a in self.listen]
        except Exception as exc:
            raise PeerUnavailableError(f"invalid listen address {self.listen}: {exc}") from None
        dialed = track_dials(host)
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
                            nursery.start_soon(self._drop_offenders)
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
            close_leftovers(dialed)

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

    def _offence(self, peer: ID, where: str, exc: BaseException) -> None:
        """A peer's input broke a parser (see the module docs): drop and refuse it."""
        pid = peer.to_base58()
        self.offenders.record(pid, where)
        logger.warning("peer %s sent input its %s could not handle (%s: %s); closing its "
                       "connection", pid[-8:], where, type(exc).__name__, str(exc)[:200])
        self._drop(peer)

    def _drop(self, peer: ID) -> None:
        with suppress(trio.WouldBlock):  # a drop for it (or many others) is queued
            self._drop_send.send_nowait(peer)

    async def _drop_offenders(self) -> None:
        async for peer in self._drop_receive:
            try:
                await self.host.get_network().close_peer(peer)
            except Exception as exc:
                logger.debug("closing the connection of %s failed: %r", peer, exc)

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
        # py-libp2p 0.8.1 parks a peer whose dial failed in a 60 s back-off cache, so a
        # peer that restarts could not be dialled again for a minute
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
        peer = stream.muxed_conn.peer_id.to_base58()
        open_ = self._mux_streams.get(peer, 0)
        if open_ >= MAX_MUX_STREAMS_PER_PEER or \
                sum(self._mux_streams.values()) >= MAX_MUX_STREAMS:
            self.mux_streams_refused += 1
            logger.debug("refusing a request stream from %s (%d open)", peer[-8:], open_)
            with suppress(Exception):
                await stream.reset()
            return
        self._mux_streams[peer] = open_ + 1
        try:
            await serve_mux_stream(
                stream, peer, self._handlers.get,
                max_frame=self.max_frame, write_timeout=self.request_timeout,
                budget=self.receive_budget_in)
        except Exception as exc:  # never let a peer's stream take the host down
            logger.debug("mux stream handler aborted: %r", exc)
        finally:
            left = self._mux_streams[peer] - 1
            if left:
                self._mux_streams[peer] = left
            else:
                del self._mux_streams[peer]

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
                stream, peer_id, max_frame=self.max_frame, write_timeout=self.request_timeout,
                budget=self.receive_budget_out)
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



