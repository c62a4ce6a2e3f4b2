"""MemoryOverlay: an in-process overlay, deterministic in virtual time, with fault injection.

One job: the simulated network (nodes, links, delivery scheduler and faults share one clock).

A ``MemoryNetwork`` holds the nodes, the connection graph and one delivery scheduler (a
heap of timed deliveries served by a single task), so thousands of messages cost no tasks.
Faults are knobs on the network: per-link latency and jitter (which reorders gossip), gossip
loss and duplication, partitions, and node crash / restart.

Semantics mirror the libp2p overlay closely enough that one conformance suite runs on both:

- gossip reaches subscribed nodes in the publisher's connected component, after one link
  latency per hop (a flood over direct connections, as GossipSub's mesh does);
- requests ride the same multiplexer as the libp2p overlay (``_mux``: one byte stream
  per peer and direction, length-prefixed records) over simulated byte streams that deliver
  in order after the link latency; a crash or partition resets them;
- dialing an unreachable peer fails after ``dial_failure_delay`` (libp2p: ~0.7 s).
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Self

import trio

from ..errors import ClosedError, PeerUnavailableError, ProtocolError
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
from ._mux import ByteStream, MuxClient, ReceiveBudget, serve_mux_stream

__all__ = ["MAX_GOSSIP_SIZE", "MemoryNetwork", "MemoryOverlay", "NetworkStats"]

logger = logging.getLogger(__name__)

MAX_GOSSIP_SIZE = 1_000_000
"""Largest gossip payload, in bytes (libp2p silently drops messages from about 1,048,000)."""

SUBSCRIPTION_BUFFER = 4096
EVENT_BUFFER = 1024
#: Seconds a stream write may take (memory writes never block; this bounds nothing real).
WRITE_TIMEOUT = 30.0
Latency = float | Callable[[str, str], float]


@dataclass
class NetworkStats:
    """Counters of what the memory network did (for tests and fault reports)."""

    gossip_published: int = 0
    gossip_delivered: int = 0
    gossip_lost: int = 0
    gossip_duplicated: int = 0
    gossip_dropped_full: int = 0
    gossip_rejected: int = 0
    streams_opened: int = 0  # requests sent
    streams_reset: int = 0  # multiplexed byte streams reset (crash, partition, disconnect)
    dials_failed: int = 0
    crashes: int = 0


class _Pipe:
    """One direction of a simulated byte stream: bytes delivered in order, then EOF or a reset."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.eof = False
        self.broken = False
        self.last_delivery = 0.0
        self._readable = trio.Event()

    def feed(self, data: bytes) -> None:
        if not (self.broken or self.eof):
            self.buffer += data
            self._readable.set()

    def end(self) -> None:
        self.eof = True
        self._readable.set()

    def break_(self) -> None:
        self.broken = True
        self.buffer.clear()
        self._readable.set()

    async def wait_readable(self) -> None:
        while not (self.buffer or self.eof or self.broken):
            await self._readable.wait()
            self._readable = trio.Event()


@dataclass(eq=False)
class _Conn:
    """A simulated duplex byte stream from ``client`` to ``server`` (one per peer and
    direction, as the libp2p overlay keeps one multiplexed stream)."""

    network: MemoryNetwork
    client: MemoryOverlay
    server: MemoryOverlay
    upstream: _Pipe  # client -> server
    downstream: _Pipe  # server -> client
    reset_done: bool = False

    def reset(self) -> None:
        if self.reset_done:
            return
        self.reset_done = True
        self.network._conns.discard(self)
        self.network.stats.streams_reset += 1
        self.upstream.break_()
        self.downstream.break_()


class _End:
    """One side of a ``_Conn``, the ``ByteStream`` the multiplexer runs on."""

    def __init__(self, conn: _Conn, sender: MemoryOverlay, receiver: MemoryOverlay,
                 inbound: _Pipe, outbound: _Pipe) -> None:
        self._conn = conn
        self._sender = sender.peer_id
        self._receiver = receiver.peer_id
        self._in = inbound
        self._out = outbound
        self._closed = False

    async def read(self, n: int | None = -1) -> bytes:
        await self._in.wait_readable()
        if self._in.broken:
            raise PeerUnavailableError("stream reset")
        size = len(self._in.buffer) if n is None or n < 0 else n
        data = bytes(self._in.buffer[:size])
        del self._in.buffer[:size]
        return data

    async def write(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if self._out.broken:
            raise PeerUnavailableError("stream reset")
        if self._closed:
            raise ClosedError("stream closed for writing")
        self._deliver(functools.partial(self._out.feed, bytes(data)))

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()
        if not self._closed:
            self._closed = True
            self._deliver(self._out.end)

    async def reset(self) -> None:
        await trio.lowlevel.checkpoint()
        self._conn.reset()

    def _deliver(self, action: Callable[[], None]) -> None:
        net = self._conn.network
        when = max(trio.current_time() + net._link_latency(self._sender, self._receiver),
                   self._out.last_delivery)
        self._out.last_delivery = when
        net._schedule_at(when, action)


class MemoryNetwork:
    """An in-process network of ``MemoryOverlay`` nodes with injectable faults.

    Use as ``async with MemoryNetwork(seed=1) as net:``; make nodes with ``node()``.
    All randomness (loss, duplication, jitter) comes from ``random.Random(seed)``.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        latency: Latency = 0.001,
        jitter: float = 0.0,
        loss: float = 0.0,
        duplicate: float = 0.0,
        dial_failure_delay: float = 0.7,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self.rng = random.Random(seed)
        self.latency = latency
        self.jitter = jitter
        self.loss = loss
        self.duplicate = duplicate
        self.dial_failure_delay = dial_failure_delay
        self.max_frame = max_frame
        self.stats = NetworkStats()
        self._nodes: dict[str, MemoryOverlay] = {}
        self._edges: dict[str, set[str]] = {}
        self._group: dict[str, int] = {}
        self._conns: set[_Conn] = set()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._index = itertools.count(1)
        self._wakeup = trio.Event()
        self._running = False
        self._hops_cache: dict[str, dict[str, int]] = {}

    # ---- lifecycle ----------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self._stack = AsyncExitStack()
        nursery = await self._stack.enter_async_context(trio.open_nursery())
        nursery.start_soon(self._scheduler)
        self._nursery = nursery
        self._running = True
        return self

    async def __aexit__(self, *exc_info: object) -> bool | None:
        self._running = False
        self._nursery.cancel_scope.cancel()
        return await self._stack.__aexit__(*exc_info)  # type: ignore[arg-type]

    def node(self, identity: Identity | None = None) -> MemoryOverlay:
        """A new (not yet started) overlay on this network; enter it with ``async with``."""
        return MemoryOverlay(self, identity or Identity.from_seed(self.rng.randbytes(32)))

    # ---- scheduler ----------------------------------------------------------------------
    def _schedule(self, delay: float, action: Callable[[], None]) -> float:
        when = trio.current_time() + max(0.0, delay)
        self._schedule_at(when, action)
        return when

    def _schedule_at(self, when: float, action: Callable[[], None]) -> None:
        if (self._heap and when < self._heap[0][0]) or not self._heap:
            self._wakeup.set()
        heapq.heappush(self._heap, (when, next(self._seq), action))

    async def _scheduler(self) -> None:
        while True:
            if not self._heap:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                continue
            when = self._heap[0][0]
            if trio.current_time() < when:
                with trio.move_on_at(when):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()
                continue
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                _, _, action = heapq.heappop(self._heap)
                try:
                    action()
                except Exception:  # a delivery must never kill the network
                    logger.exception("memory network delivery failed")
            await trio.lowlevel.checkpoint()

    def _link_latency(self, src: str, dst: str) -> float:
        base = self.latency(src, dst) if callable(self.latency) else self.latency
        return base + (self.rng.uniform(0.0, self.jitter) if self.jitter else 0.0)

    # ---- topology -----------------------------------------------------------------------
    def _reachable(self, a: str, b: str) -> bool:
        return (
            a in self._nodes
            and b in self._nodes
            and self._group.get(a, -1) == self._group.get(b, -1)
        )

    def _topology_changed(self) -> None:
        self._hops_cache.clear()

    def _add_edge(self, a: str, b: str) -> bool:
        if b in self._edges.setdefault(a, set()):
            return False
        self._edges[a].add(b)
        self._edges.setdefault(b, set()).add(a)
        self._topology_changed()
        self._nodes[a]._emit(PeerEvent(PeerEventKind.CONNECTED, b))
        self._nodes[b]._emit(PeerEvent(PeerEventKind.CONNECTED, a))
        self._nodes[a]._known.add(b)
        self._nodes[b]._known.add(a)
        return True

    def _drop_edge(self, a: str, b: str) -> None:
        if b not in self._edges.get(a, ()):
            return
        self._edges[a].discard(b)
        self._edges[b].discard(a)
        self._topology_changed()
        for x, y in ((a, b), (b, a)):
            if x in self._nodes:
                self._nodes[x]._emit(PeerEvent(PeerEventKind.DISCONNECTED, y))
        for c in list(self._conns):
            if {c.client.peer_id, c.server.peer_id} == {a, b}:
                c.reset()

    def _hops_from(self, src: str) -> dict[str, int]:
        cached = self._hops_cache.get(src)
        if cached is not None:
            return cached
        hops = {src: 0}
        frontier = deque([src])
        while frontier:
            cur = frontier.popleft()
            for nxt in sorted(self._edges.get(cur, ())):
                if nxt not in hops:
                    hops[nxt] = hops[cur] + 1
                    frontier.append(nxt)
        self._hops_cache[src] = hops
        return hops

    # ---- faults -------------------------------------------------------------------------
    def partition(self, *groups: Iterable[str]) -> None:
        """Split the network: peers in different groups cannot reach each other.

        Peers named in no group form one more group together. Connections across groups are
        closed and their streams reset; ``heal()`` lets peers dial each other again.
        """
        self._group = {pid: i for i, g in enumerate(groups) for pid in g}
        for a in list(self._edges):
            for b in list(self._edges[a]):
                if not self._reachable(a, b):
                    self._drop_edge(a, b)

    def heal(self) -> None:
        """Undo ``partition()`` (connections are not re-opened by themselves)."""
        self._group = {}

    def crash(self, peer_id: str) -> None:
        """Kill a node abruptly: its ``async with`` body is cancelled, its links and streams
        break. Start a new overlay with the same identity to restart it."""
        node = self._nodes.get(peer_id)
        if node is None:
            raise KeyError(f"no live node {peer_id}")
        self.stats.crashes += 1
        node.crashed = True
        self._unregister(node)
        node._scope.cancel()

    def live_peers(self) -> frozenset[str]:
        """Peer IDs of the nodes running now."""
        return frozenset(self._nodes)

    # ---- node registry ------------------------------------------------------------------
    def _register(self, node: MemoryOverlay) -> None:
        if not self._running:
            raise ClosedError("the MemoryNetwork is not running (use `async with network:`)")
        if node.peer_id in self._nodes:
            raise ClosedError(f"a node with peer id {node.peer_id} is already running")
        self._nodes[node.peer_id] = node
        self._edges.setdefault(node.peer_id, set())

    def _unregister(self, node: MemoryOverlay) -> None:
        if self._nodes.get(node.peer_id) is not node:
            return
        for other in list(self._edges.get(node.peer_id, ())):
            self._drop_edge(node.peer_id, other)
        for c in list(self._conns):
            if node in (c.client, c.server):
                c.reset()
        del self._nodes[node.peer_id]
        self._edges.pop(node.peer_id, None)
        self._topology_changed()

    def _open_conn(self, client: MemoryOverlay, server: MemoryOverlay) -> tuple[_End, _End]:
        conn = _Conn(self, client, server, _Pipe(), _Pipe())
        self._conns.add(conn)
        return (_End(conn, client, server, conn.downstream, conn.upstream),
                _End(conn, server, client, conn.upstream, conn.downstream))

    # ---- gossip -------------------------------------------------------------------------
    def _publish(self, src: MemoryOverlay, topic: str, data: bytes) -> None:
        self.stats.gossip_published += 1
        hops = self._hops_from(src.peer_id)
        for dst, n in hops.items():
            if n == 0:
                continue
            if self.loss and self.rng.random() < self.loss:
                self.stats.gossip_lost += 1
                continue
            delay = sum(self._link_latency(src.peer_id, dst) for _ in range(n))
            msg = GossipMessage(topic, data, src.peer_id)
            node = self._nodes[dst]
            self._schedule(delay, _bind_deliver(node, msg))
            if self.duplicate and self.rng.random() < self.duplicate:
                self.stats.gossip_duplicated += 1
                self._schedule(delay + self._link_latency(src.peer_id, dst),
                               _bind_deliver(node, msg))


def _bind_deliver(node: MemoryOverlay, msg: GossipMessage) -> Callable[[], None]:
    return lambda: node._deliver_gossip(msg)


class MemoryOverlay:
    """One node's overlay on a ``MemoryNetwork`` (see ``Overlay``)."""

    def __init__(self, network: MemoryNetwork, identity: Identity) -> None:
        self.network = network
        self.identity = identity
        self._index = next(network._index)
        self._handlers: dict[str, Handler] = {}
        self._subs: dict[str, list[trio.MemorySendChannel[GossipMessage]]] = {}
        self._validators: dict[str, Validator] = {}
        self._event_sinks: list[trio.MemorySendChannel[PeerEvent]] = []
        self._known: set[str] = set()
        self._clients: dict[str, MuxClient] = {}
        #: bytes of unfinished frames that peers' streams to us (in) and ours (out) may hold
        self.receive_budget_in = ReceiveBudget()
        self.receive_budget_out = ReceiveBudget()
        self._scope = trio.CancelScope()
        self._open = False
        self.crashed = False

    @property
    def peer_id(self) -> str:
        """This node's peer ID."""
        return self.identity.peer_id

    @property
    def addresses(self) -> tuple[str, ...]:
        """This node's (single) memory address."""
        return (f"/memory/{self._index}/p2p/{self.peer_id}",)

    # ---- lifecycle ----------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self._stack = AsyncExitStack()
        await self._stack.enter_async_context(self._lifetime())
        return self

    async def __aexit__(self, *exc_info: object) -> bool | None:
        return await self._stack.__aexit__(*exc_info)  # type: ignore[arg-type]

    @asynccontextmanager
    async def _lifetime(self) -> AsyncIterator[None]:
        self.network._register(self)
        self._open = True
        with self._scope:
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    try:
                        yield
                    finally:
                        self._open = False
                        self.network._unregister(self)
                        nursery.cancel_scope.cancel()
            finally:
                self._open = False
                for sinks in self._subs.values():
                    for sink in sinks:
                        sink.close()
                for ev_sink in self._event_sinks:
                    ev_sink.close()

    def _check_open(self) -> None:
        if not self._open:
            raise ClosedError("overlay is not running (use `async with overlay:`)")

    def _emit(self, event: PeerEvent) -> None:
        fan_out(self._event_sinks, event)

    # ---- connections --------------------------------------------------------------------
    async def connect(self, address: str) -> str:
        """Dial a peer by its memory address (``/memory/<n>/p2p/<peer id>``)."""
        self._check_open()
        try:
            pid = peer_id_of(address)
        except ValueError as exc:
            raise PeerUnavailableError(str(exc)) from None
        await self._dial(pid)
        return pid

    async def _dial(self, pid: str) -> None:
        if pid == self.peer_id:
            raise PeerUnavailableError("cannot dial ourselves")
        if pid in self.network._edges.get(self.peer_id, ()):
            await trio.lowlevel.checkpoint()
            return
        if not self.network._reachable(self.peer_id, pid):
            self.network.stats.dials_failed += 1
            await trio.sleep(self.network.dial_failure_delay)
            raise PeerUnavailableError(f"cannot reach peer {pid[-8:]}")
        # a handshake takes a round trip
        await trio.sleep(2 * self.network._link_latency(self.peer_id, pid))
        if not self.network._reachable(self.peer_id, pid) or not self._open:
            raise PeerUnavailableError(f"peer {pid[-8:]} went away while dialing")
        self.network._add_edge(self.peer_id, pid)

    def add_peer_addresses(self, peer_id: str, addresses: tuple[str, ...]) -> None:
        """Remember that ``peer_id`` can be dialed."""
        if peer_id != self.peer_id and addresses:
            self._known.add(peer_id)

    def connected_peers(self) -> frozenset[str]:
        """Peers with a direct connection now."""
        return frozenset(self.network._edges.get(self.peer_id, ()))

    async def disconnect(self, peer_id: str) -> None:
        """Close the direct connection to ``peer_id``, if any."""
        await trio.lowlevel.checkpoint()
        self.network._drop_edge(self.peer_id, peer_id)

    def peer_events(self) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[PeerEvent]]:
        """Connection events while the context is open."""
        return _sink_context(self._event_sinks, EVENT_BUFFER)

    # ---- gossip -------------------------------------------------------------------------
    async def publish(self, topic: str, data: bytes) -> None:
        """Flood ``data`` to the subscribers of ``topic`` reachable from here."""
        self._check_open()
        if len(data) > MAX_GOSSIP_SIZE:
            raise ProtocolError(
                f"gossip message of {len(data)} bytes exceeds the limit of {MAX_GOSSIP_SIZE}"
            )
        await trio.lowlevel.checkpoint()
        self.network._publish(self, topic, bytes(data))

    def subscribe(
        self, topic: str, *, validate: Validator | None = None
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[GossipMessage]]:
        """Messages on ``topic`` from other nodes while the context is open."""
        self._check_open()
        if validate is not None:
            self._validators[topic] = validate
        return _sink_context(self._subs.setdefault(topic, []), SUBSCRIPTION_BUFFER)

    def _deliver_gossip(self, msg: GossipMessage) -> None:
        if not self._open:
            return
        sinks = self._subs.get(msg.topic)
        if not sinks:
            return
        validate = self._validators.get(msg.topic)
        if validate is not None and not run_validator(validate, msg.data):
            self.network.stats.gossip_rejected += 1
            return
        full = fan_out(sinks, msg)
        self.network.stats.gossip_delivered += len(sinks) - full
        self.network.stats.gossip_dropped_full += full

    # ---- request / response -------------------------------------------------------------
    def serve(self, protocol: str, handler: Handler) -> None:
        """Answer requests for ``protocol`` with ``handler``."""
        self._handlers[protocol] = handler

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
        net = self.network
        if len(payload) > net.max_frame:
            raise ProtocolError(
                f"request of {len(payload)} bytes exceeds the frame limit of {net.max_frame}"
            )
        if peer_id not in self._known and peer_id not in self.connected_peers():
            await trio.lowlevel.checkpoint()
            raise PeerUnavailableError(f"no known address for peer {peer_id[-8:]}")
        client = await self._client(peer_id)
        net.stats.streams_opened += 1
        async with client.request(protocol, payload, idle_timeout) as response:
            yield response

    async def _client(self, peer_id: str) -> MuxClient:
        client = self._clients.get(peer_id)
        if client is not None and not client.broken:
            return client
        await self._dial(peer_id)
        client = self._clients.get(peer_id)  # another request may have opened it meanwhile
        if client is not None and not client.broken:
            return client
        server = self.network._nodes.get(peer_id)
        if server is None or not server._open or not self._open:
            raise PeerUnavailableError(f"peer {peer_id[-8:]} went away while dialing")
        mine, theirs = self.network._open_conn(self, server)
        client = MuxClient(mine, peer_id, max_frame=self.network.max_frame,
                           write_timeout=WRITE_TIMEOUT, budget=self.receive_budget_out)
        self._clients[peer_id] = client
        self._nursery.start_soon(self._run_client, client)
        server._nursery.start_soon(server._serve_conn, theirs, self.peer_id)
        return client

    async def _run_client(self, client: MuxClient) -> None:
        try:
            await client.run()
        finally:
            if self._clients.get(client.peer) is client:
                del self._clients[client.peer]

    async def _serve_conn(self, stream: ByteStream, peer: str) -> None:
        await serve_mux_stream(stream, peer, self._handlers.get,
                               max_frame=self.network.max_frame, write_timeout=WRITE_TIMEOUT,
                               budget=self.receive_budget_in)


@asynccontextmanager
async def _sink_context(
    sinks: list[trio.MemorySendChannel[Any]], size: int
) -> AsyncIterator[trio.MemoryReceiveChannel[Any]]:
    send, recv = trio.open_memory_channel[Any](size)
    sinks.append(send)
    try:
        async with recv:
            yield recv
    finally:
        if send in sinks:
            sinks.remove(send)
        send.close()

