"""Membership: a peer table kept in sync by signed gossip heartbeats.

Every node publishes a signed ``Heartbeat`` on the network's ``peers`` topic every
``heartbeat_interval``: its addresses, served models and their load, policy knobs, stake and
credit, under an *incarnation* (fixed for the life of a process, larger after every restart)
and a *sequence number* (increasing within an incarnation).

``PeerTable`` is the sans-IO state machine: heartbeats and clock ticks in, events out.
A peer silent for ``suspect_timeout`` is SUSPECT; silent for ``peer_timeout`` it is removed
(LEFT) and a tombstone keeps its last (incarnation, seq) so replays cannot resurrect it; a
heartbeat with a larger incarnation re-admits it (REJOINED). Heartbeats that are forged (bad
signature, or relayed by someone other than their signer), replayed, stale, from another
network or malformed are ignored and counted in ``PeerTable.rejected``, and so are
heartbeats whose values are out of range (``heartbeat_problem()``: a stake of 1e300, a
negative credit, 201 models, an address of another peer). The same stateless checks run as
the topic's gossip validator (``PeerTable.valid()``), so a node relays none of these.

``Membership`` is the I/O shell: it publishes, receives, ticks, and keeps the node
connected (bootstrap peers first, then up to ``target_degree`` known peers).
"""

from __future__ import annotations

import enum
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from ._compat import TaskStatus
from .clock import WallClock, system_wall_clock
from .config import MembershipParams
from .errors import OverlayError, ProtocolError
from .identity import Identity, verify
from .overlay import Overlay, peer_id_of
from .overlay._base import fan_out
from .wire import Message, Signed, decode, encode, message, record, seal

__all__ = [
    "Goodbye",
    "Heartbeat",
    "LocalState",
    "Membership",
    "MembershipEvent",
    "MembershipEventKind",
    "ModelLoad",
    "PeerInfo",
    "PeerStatus",
    "PeerTable",
    "heartbeat_problem",
    "peers_topic",
]

logger = logging.getLogger(__name__)

MAX_PEERS = 10_000
#: bounds of what a heartbeat may claim (anything beyond is a lie or garbage)
MAX_MODELS = 16
MAX_ADDRESSES = 8
MAX_NAME = 256
MAX_POLICY_KEYS = 16
MAX_CREDIT = 1e15
MAX_REQUESTS = 1_000_000
MAX_COUNTER = 1 << 62


def peers_topic(network_id: str) -> str:
    """The gossip topic carrying heartbeats of ``network_id``."""
    return f"/wwwserve/{network_id}/peers/1"


# ---- messages ---------------------------------------------------------------------------


@record
@dataclass(frozen=True, slots=True)
class ModelLoad:
    """A served model and its load, as gossiped in heartbeats."""

    model: str
    token_usage: float
    running: int
    queued: int


@message("heartbeat", 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat(Message):
    """A node's signed periodic announcement of itself."""

    network_id: str
    peer_id: str
    incarnation: int
    seq: int
    timestamp: float
    addresses: tuple[str, ...]
    models: tuple[ModelLoad, ...] = ()
    policy: dict[str, float] = field(default_factory=dict)
    stake: float = 0.0
    credit: float = 0.0


@message("goodbye", 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class Goodbye(Message):
    """A node's signed notice that it is leaving (sent on clean shutdown)."""

    network_id: str
    peer_id: str
    incarnation: int
    seq: int
    timestamp: float


@dataclass(frozen=True, slots=True)
class LocalState:
    """What this node announces about itself besides its identity and addresses."""

    models: tuple[ModelLoad, ...] = ()
    policy: Mapping[str, float] = field(default_factory=dict)
    stake: float = 0.0
    credit: float = 0.0


def heartbeat_problem(msg: Heartbeat | Goodbye) -> str | None:
    """What is out of range in ``msg`` (None if nothing): counters, clock, addresses (at
    most ``MAX_ADDRESSES``, each naming the sender's own peer id), models (at most
    ``MAX_MODELS``, names of at most ``MAX_NAME`` characters, token usage in
    [0, 1], request counts in [0, ``MAX_REQUESTS``]), policy knobs (finite numbers) and
    stake and credit (in [0, ``MAX_CREDIT``])."""
    if not 0 <= msg.incarnation < MAX_COUNTER or not 0 <= msg.seq < MAX_COUNTER:
        return "incarnation or sequence number out of range"
    if len(msg.peer_id) > MAX_NAME or len(msg.network_id) > MAX_NAME:
        return "peer or network id too long"
    if isinstance(msg, Goodbye):
        return None
    if len(msg.addresses) > MAX_ADDRESSES:
        return f"{len(msg.addresses)} addresses (at most {MAX_ADDRESSES})"
    for address in msg.addresses:
        if len(address) > MAX_NAME or not address.endswith("/p2p/" + msg.peer_id):
            return "an address that is not the sender's"
    if len(msg.models) > MAX_MODELS:
        return f"{len(msg.models)} models (at most {MAX_MODELS})"
    for m in msg.models:
        if not 0 < len(m.model) <= MAX_NAME:
            return "a model name that is empty or too long"
        if not 0.0 <= m.token_usage <= 1.0:
            return f"token usage {m.token_usage!r} outside [0, 1]"
        if not (0 <= m.running <= MAX_REQUESTS and 0 <= m.queued <= MAX_REQUESTS):
            return "request counts out of range"
    if len(msg.policy) > MAX_POLICY_KEYS or any(len(k) > MAX_NAME for k in msg.policy):
        return "too many or too long policy keys"
    if any(abs(v) > MAX_CREDIT for v in msg.policy.values()):
        return "a policy value out of range"
    if not (0.0 <= msg.stake <= MAX_CREDIT and 0.0 <= msg.credit <= MAX_CREDIT):
        return "stake or credit out of range"
    return None


# ---- the sans-IO peer table --------------------------------------------------------------


class PeerStatus(enum.Enum):
    """Liveness of a peer in the table."""

    ALIVE = "alive"
    SUSPECT = "suspect"


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """What we know of a live peer, from its latest accepted heartbeat."""

    peer_id: str
    incarnation: int
    seq: int
    addresses: tuple[str, ...]
    models: tuple[ModelLoad, ...]
    policy: Mapping[str, float]
    stake: float
    credit: float
    status: PeerStatus
    first_seen: float
    last_seen: float


class MembershipEventKind(enum.Enum):
    """What changed in the peer table."""

    JOINED = "joined"
    REJOINED = "rejoined"  # same peer id, new incarnation (a restart)
    UPDATED = "updated"
    SUSPECTED = "suspected"
    RECOVERED = "recovered"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class MembershipEvent:
    """A change of the peer table. ``info`` is the peer's last known state."""

    kind: MembershipEventKind
    peer_id: str
    info: PeerInfo
    at: float


@dataclass(slots=True)
class _Tombstone:
    incarnation: int
    seq: int
    expires: float


class PeerTable:
    """The peer table state machine (sans-IO; times are passed in).

    ``now`` is the local monotonic time (trio's clock); ``wall_now`` the local wall clock,
    against which heartbeat timestamps are checked for staleness.
    """

    def __init__(self, *, local_peer_id: str, network_id: str,
                 params: MembershipParams, max_peers: int = MAX_PEERS) -> None:
        self.local_peer_id = local_peer_id
        self.network_id = network_id
        self.params = params
        self.max_peers = max_peers
        self._peers: dict[str, PeerInfo] = {}
        self._tombstones: dict[str, _Tombstone] = {}
        self.rejected: Counter[str] = Counter()
        self.accepted = 0

    @property
    def peers(self) -> Mapping[str, PeerInfo]:
        """Live peers (ALIVE or SUSPECT), by peer ID."""
        return self._peers

    def valid(self, data: bytes) -> bool:
        """The gossip validator of the peers topic: True if ``data`` is a well-formed,
        well-signed heartbeat or goodbye of this network with values in range (the checks
        that need no state; replays and staleness are ``receive()``'s)."""
        try:
            envelope = decode(data, expect=Signed)
            msg = decode(envelope.body)
        except ProtocolError:
            return False
        return (isinstance(msg, Heartbeat | Goodbye) and msg.network_id == self.network_id
                and envelope.signer == msg.peer_id and heartbeat_problem(msg) is None
                and verify(envelope.signer, envelope.body, envelope.signature))

    def receive(self, data: bytes, *, source: str, now: float,
                wall_now: float) -> list[MembershipEvent]:
        """Apply one gossip payload (a signed heartbeat or goodbye) from ``source``.

        Returns the resulting events; anything unacceptable is counted in ``rejected``
        under its reason (malformed, forged, replayed, stale, foreign_network, self, ...).
        """
        try:
            envelope = decode(data, expect=Signed)
            msg = decode(envelope.body)
        except ProtocolError:
            self.rejected["malformed"] += 1
            return []
        if not isinstance(msg, Heartbeat | Goodbye):
            self.rejected["unexpected_type"] += 1
            return []
        reason = self._check(msg, envelope, source, wall_now)
        if reason is not None:
            self.rejected[reason] += 1
            return []
        if isinstance(msg, Heartbeat):
            return self._on_heartbeat(msg, now)
        return self._on_goodbye(msg, now)

    def _check(self, msg: Heartbeat | Goodbye, envelope: Signed, source: str,
               wall_now: float) -> str | None:
        """Return the reason to reject ``msg``, or None if it is acceptable."""
        if msg.network_id != self.network_id:
            return "foreign_network"
        if msg.peer_id == self.local_peer_id:
            return "self"
        if envelope.signer != msg.peer_id or source != msg.peer_id:
            return "forged"  # signed or relayed by someone who is not its subject
        if not verify(envelope.signer, envelope.body, envelope.signature):
            return "forged"
        if heartbeat_problem(msg) is not None:
            return "out_of_range"
        if abs(wall_now - msg.timestamp) > self.params.max_heartbeat_age:
            return "stale"
        last: PeerInfo | _Tombstone | None = self._peers.get(msg.peer_id)
        if last is None:
            last = self._tombstones.get(msg.peer_id)
        if last is not None:
            mine, theirs = (msg.incarnation, msg.seq), (last.incarnation, last.seq)
            if mine == theirs:
                return "replayed"
            if mine < theirs:
                return "stale"
        return None

    def _on_heartbeat(self, hb: Heartbeat, now: float) -> list[MembershipEvent]:
        prev = self._peers.get(hb.peer_id)
        if prev is None and len(self._peers) >= self.max_peers:
            self.rejected["table_full"] += 1
            return []
        self.accepted += 1
        tomb = self._tombstones.pop(hb.peer_id, None)
        info = PeerInfo(
            peer_id=hb.peer_id, incarnation=hb.incarnation, seq=hb.seq,
            addresses=hb.addresses, models=hb.models, policy=dict(hb.policy),
            stake=hb.stake, credit=hb.credit, status=PeerStatus.ALIVE,
            first_seen=now if prev is None or prev.incarnation != hb.incarnation
            else prev.first_seen,
            last_seen=now,
        )
        self._peers[hb.peer_id] = info
        if prev is None:
            kind = (MembershipEventKind.REJOINED
                    if tomb is not None and hb.incarnation > tomb.incarnation
                    else MembershipEventKind.JOINED)
        elif hb.incarnation > prev.incarnation:
            kind = MembershipEventKind.REJOINED
        elif prev.status is PeerStatus.SUSPECT:
            kind = MembershipEventKind.RECOVERED
        else:
            kind = MembershipEventKind.UPDATED
        return [MembershipEvent(kind, hb.peer_id, info, now)]

    def _on_goodbye(self, bye: Goodbye, now: float) -> list[MembershipEvent]:
        prev = self._peers.get(bye.peer_id)
        if prev is None:
            self._bury(bye.peer_id, bye.incarnation, bye.seq, now)
            return []
        return [self._remove(prev, now, incarnation=bye.incarnation, seq=bye.seq)]

    def _bury(self, peer_id: str, incarnation: int, seq: int, now: float) -> None:
        ttl = self.params.max_heartbeat_age + self.params.peer_timeout
        self._tombstones[peer_id] = _Tombstone(incarnation, seq, now + ttl)

    def _remove(self, info: PeerInfo, now: float, *, incarnation: int,
                seq: int) -> MembershipEvent:
        del self._peers[info.peer_id]
        self._bury(info.peer_id, incarnation, seq, now)
        return MembershipEvent(MembershipEventKind.LEFT, info.peer_id, info, now)

    def tick(self, now: float) -> list[MembershipEvent]:
        """Advance time: suspect and remove silent peers, expire old tombstones."""
        events: list[MembershipEvent] = []
        for info in list(self._peers.values()):
            silent = now - info.last_seen
            if silent >= self.params.peer_timeout:
                events.append(self._remove(info, now, incarnation=info.incarnation,
                                           seq=info.seq))
            elif silent >= self.params.suspect_timeout and info.status is PeerStatus.ALIVE:
                info = replace(info, status=PeerStatus.SUSPECT)
                self._peers[info.peer_id] = info
                events.append(MembershipEvent(MembershipEventKind.SUSPECTED, info.peer_id,
                                              info, now))
        for pid in [p for p, t in self._tombstones.items() if t.expires <= now]:
            del self._tombstones[pid]
        return events

# ---- the I/O shell -----------------------------------------------------------------------


class Membership:
    """Runs gossip membership for one node over an ``Overlay``.

    Start it in a nursery with ``await nursery.start(membership.run)``; it returns once the
    node is subscribed and has sent its first heartbeat.
    """

    def __init__(
        self,
        overlay: Overlay,
        identity: Identity,
        *,
        network_id: str,
        rng: random.Random,
        params: MembershipParams | None = None,
        bootstrap: tuple[str, ...] = (),
        target_degree: int = 8,
        wall_clock: WallClock = system_wall_clock,
        local_state: Callable[[], LocalState] = LocalState,
    ) -> None:
        self.overlay = overlay
        self.identity = identity
        self.network_id = network_id
        self.params = params or MembershipParams()
        self.bootstrap = bootstrap
        self.target_degree = target_degree
        self.wall_clock = wall_clock
        self.rng = rng
        self.local_state = local_state
        self.table = PeerTable(local_peer_id=identity.peer_id, network_id=network_id,
                               params=self.params)
        self.topic = peers_topic(network_id)
        self.incarnation = 0
        self._seq = 0
        self._sinks: list[trio.MemorySendChannel[MembershipEvent]] = []

    @property
    def peers(self) -> Mapping[str, PeerInfo]:
        """The live peer table."""
        return self.table.peers

    def events(self) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[MembershipEvent]]:
        """Receive membership events while the context is open."""
        return self._event_sink()

    @asynccontextmanager
    async def _event_sink(self) -> AsyncIterator[trio.MemoryReceiveChannel[MembershipEvent]]:
        send, recv = trio.open_memory_channel[MembershipEvent](1024)
        self._sinks.append(send)
        try:
            async with recv:
                yield recv
        finally:
            self._sinks.remove(send)

    def _emit(self, events: list[MembershipEvent]) -> None:
        for ev in events:
            logger.debug("membership %s: %s %s", self.identity.peer_id[-6:], ev.kind.value,
                         ev.peer_id[-6:])
            if ev.kind in (MembershipEventKind.JOINED, MembershipEventKind.REJOINED):
                self.overlay.add_peer_addresses(ev.peer_id, ev.info.addresses)
            fan_out(self._sinks, ev)

    def _next(self) -> tuple[int, float]:
        self._seq += 1
        return self._seq, self.wall_clock()

    def make_heartbeat(self) -> Heartbeat:
        """Build this node's next heartbeat."""
        seq, ts = self._next()
        state = self.local_state()
        hb = Heartbeat(
            network_id=self.network_id, peer_id=self.identity.peer_id,
            incarnation=self.incarnation, seq=seq, timestamp=ts,
            addresses=self.overlay.addresses, models=state.models,
            policy=dict(state.policy), stake=state.stake, credit=state.credit,
        )
        return hb

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; announces a goodbye on the way out if it can."""
        # microseconds of wall time: larger after every restart of the process
        self.incarnation = int(self.wall_clock() * 1_000_000)
        try:
            async with self.overlay.subscribe(self.topic, validate=self.table.valid) as inbox, \
                    trio.open_nursery() as n:
                n.start_soon(self._receive_loop, inbox)
                n.start_soon(self._tick_loop)
                n.start_soon(self._connect_loop)
                await self._publish(self.make_heartbeat())
                n.start_soon(self._heartbeat_loop)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.leave()

    async def leave(self) -> None:
        """Publish a signed goodbye so peers drop us at once (best effort)."""
        seq, ts = self._next()
        bye = Goodbye(network_id=self.network_id, peer_id=self.identity.peer_id,
                      incarnation=self.incarnation, seq=seq, timestamp=ts)
        try:
            await self.overlay.publish(self.topic, encode(seal(bye, self.identity)))
        except Exception as exc:  # the overlay may already be closed
            logger.debug("goodbye not sent: %r", exc)

    async def _publish(self, msg: Message) -> None:
        try:
            await self.overlay.publish(self.topic, encode(seal(msg, self.identity)))
        except OverlayError as exc:
            logger.warning("heartbeat not published: %s", exc)

    async def _heartbeat_loop(self) -> None:
        interval = self.params.heartbeat_interval
        while True:
            # +-10% jitter keeps nodes from beating in lockstep
            await trio.sleep(interval * self.rng.uniform(0.9, 1.1))
            await self._publish(self.make_heartbeat())

    async def _receive_loop(self, inbox: trio.MemoryReceiveChannel[Any]) -> None:
        async for gm in inbox:
            self._emit(self.table.receive(gm.data, source=gm.source, now=trio.current_time(),
                                          wall_now=self.wall_clock()))

    async def _tick_loop(self) -> None:
        # a quarter heartbeat of precision: a departed peer goes at most that late
        period = min(self.params.heartbeat_interval, self.params.suspect_timeout) / 4
        while True:
            await trio.sleep(period)
            self._emit(self.table.tick(trio.current_time()))

    async def _connect_loop(self) -> None:
        """Keep bootstrap peers and up to ``target_degree`` known peers connected.

        Bootstrap peers that are not connected are re-dialed with exponential back-off (up to
        30 s) even while other connections exist: that is how two sides of a healed partition
        find each other again.
        """
        interval = self.params.heartbeat_interval
        backoff, next_bootstrap = interval, 0.0
        me = self.identity.peer_id
        while True:
            connected = self.overlay.connected_peers()
            targets: list[str] = []
            now = trio.current_time()
            if now >= next_bootstrap:
                missing = [a for a in self.bootstrap
                           if peer_id_of(a) != me and peer_id_of(a) not in connected]
                targets.extend(missing)
                if missing:
                    next_bootstrap = now + backoff * self.rng.uniform(0.5, 1.0)
                    backoff = min(backoff * 2, 30.0)
                else:
                    backoff = interval
            want = self.target_degree - len(connected) - len(targets)
            if want > 0:
                candidates = [p for p in sorted(self.table.peers)
                              if p not in connected and self.table.peers[p].addresses]
                self.rng.shuffle(candidates)
                targets.extend(self.table.peers[p].addresses[0] for p in candidates[:want])
            if targets:
                async with trio.open_nursery() as n:
                    for addr in targets:
                        n.start_soon(self._dial, addr)
            await trio.sleep(interval)

    async def _dial(self, address: str) -> None:
        try:
            await self.overlay.connect(address)
        except OverlayError as exc:
            logger.debug("dial %s failed: %s", address, exc)
