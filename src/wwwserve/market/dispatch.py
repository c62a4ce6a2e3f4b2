"""The dispatcher: decides, for every request, where it runs — event-driven.

A user's request is decided when it arrives; if the policy says neither run, offload nor
queue, it waits for something to change (a local request finishing, a peer's heartbeat)
and is decided again, until its deadline. Offloading draws ``candidates`` peers by stake
(:func:`~.pos.weighted_sample`) among live peers serving the model, probes them in
parallel, sends the request to the first that accepts and streams its answer back.

Failures: an executor that breaks or stalls (no chunk for ``stall_timeout``) is abandoned
and the request decided again while its deadline allows. An executor whose engine is
healthy but silent on a request (queued behind others, or preempted for KV and waiting to
be prefilled again) sends an empty keepalive chunk every ``keepalive_interval``, so a
slow answer is not taken for a dead executor. Streamed requests whose tokens
already reached the user cannot be retried: they end with :class:`StreamBrokenError`.
Non-streamed requests are buffered per attempt, so a failed attempt leaves no trace.
An answer counts once its last chunk (with its usage) arrived: if the executor's stream then
breaks, or its receipt and end do not follow within ``probe_timeout``, the answer stands.
A request is paid for once, only after it completed, by request id.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import trio

from .._compat import TaskStatus
from ..engines import Chunk, CompletionRequest, Emit, Engine, Usage
from ..errors import (
    ClosedError,
    DeadlineExceededError,
    EngineError,
    ModelNotFoundError,
    NoCapacityError,
    OverlayError,
    ProtocolError,
    StreamBrokenError,
    WWWServeError,
)
from ..evidence import AnswerReceipt
from ..identity import Identity
from ..log import tracing
from ..membership import PeerInfo, PeerStatus
from ..overlay import Overlay, ResponseSender
from ..sampling import weighted_sample
from ..wire import Signed, decode, encode, seal
from .credit import CreditAccount
from .messages import OFFLOAD_PROTOCOL, PROBE_PROTOCOL, Offload, Probe, ProbeReply
from .policy import ModelView, NodeView, Policy

if TYPE_CHECKING:
    from ..duel.service import DuelService

__all__ = ["Dispatcher", "LocalModel"]

logger = logging.getLogger(__name__)

#: answers shorter than this (tokens) say too little about an engine's decode speed
SPEED_MIN_TOKENS = 32
#: weight of the latest answer in a decode speed's moving average
SPEED_WEIGHT = 0.2

#: what an executor sends while an accepted request is silent (see module docs)
_KEEPALIVE = Chunk(text="")
_KEEPALIVE_BYTES = encode(_KEEPALIVE)


@dataclass(slots=True)
class LocalModel:
    """A model this node serves: its name, engine and target token usage."""

    name: str
    engine: Engine
    target_token_usage: float = 0.6


class _Sink:
    """The user's side of one request across attempts (buffers non-streamed answers)."""

    def __init__(self, emit: Emit, stream: bool) -> None:
        self._emit = emit
        self._stream = stream
        self._buffer: list[Chunk] = []
        self.committed = False
        self.duel_copy = False

    async def send(self, chunk: Chunk) -> None:
        if self._stream:
            self.committed = True
            await self._emit(chunk)
        else:
            self._buffer.append(chunk)

    async def finish(self) -> None:
        for chunk in self._buffer:
            await self._emit(chunk)
        self._buffer.clear()

    def receipt(self, envelope: bytes) -> None:
        pass  # only duels keep receipts

    def failed(self, why: str) -> None:
        self._buffer.clear()
        if self.committed:
            raise StreamBrokenError(f"the answer broke off after it had started: {why}")


class _Meter:
    """Times one answer's tokens, from the first to the last (its decode speed)."""

    __slots__ = ("first", "last", "tokens")

    def __init__(self) -> None:
        self.first = self.last = 0.0
        self.tokens = 0

    def note(self, chunk: Chunk) -> None:
        if chunk.tokens:
            now = trio.current_time()
            if not self.tokens:
                self.first = now
            self.last = now
            self.tokens += chunk.tokens

    def speed(self) -> float | None:
        """Tokens per second after the first, or None for a short or instant answer."""
        seconds = self.last - self.first
        if self.tokens < SPEED_MIN_TOKENS or seconds <= 0:
            return None
        return (self.tokens - 1) / seconds


class _SinkLike(Protocol):
    duel_copy: bool

    async def send(self, chunk: Chunk) -> None: ...
    async def finish(self) -> None: ...
    def failed(self, why: str) -> None: ...
    def receipt(self, envelope: bytes) -> None: ...


class _Race:
    """The user's side of a duelled request: the first answer to qualify reaches the user
    (the first to stream a chunk if streaming, else the first complete one)."""

    def __init__(self, sink: _Sink, stream: bool) -> None:
        self.sink = sink
        self.stream = stream
        self.user: _Tap | None = None
        self.closed = False  # the user's request has returned: forward nothing more
        self.decided = trio.Event()

    async def forward(self, chunk: Chunk) -> None:
        if self.closed:
            return
        try:
            await self.sink.send(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True  # the user went away

    async def attach(self, tap: _Tap) -> None:
        self.user = tap
        for chunk in tap.chunks:
            await self.forward(chunk)


class _Tap:
    """One executor's answer in a duel: kept for judging, and the user's if it wins."""

    def __init__(self, race: _Race, *, copy: bool = False) -> None:
        self.race = race
        #: the duel's second executor's copy (counted apart from offloaded requests)
        self.duel_copy = copy
        self.chunks: list[Chunk] = []
        self.executor: str | None = None
        self.usage: Usage | None = None
        self.settled = False
        self.receipt_envelope = b""

    def receipt(self, envelope: bytes) -> None:
        self.receipt_envelope = envelope

    @property
    def text(self) -> str | None:
        """The whole answer, if it completed."""
        return "".join(c.text for c in self.chunks) if self.usage is not None else None

    async def send(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        race = self.race
        if race.user is self:
            await race.forward(chunk)
        elif race.user is None and race.stream:
            await race.attach(self)

    async def finish(self) -> None:
        pass  # completion is marked by :meth:`done`, with the usage

    def failed(self, why: str) -> None:
        self.chunks.clear()

    async def done(self, usage: Usage | None) -> None:
        self.usage = usage
        self.settled = True
        race = self.race
        if usage is not None and race.user is None:
            await race.attach(self)
        if race.user is self:
            race.decided.set()


class _Refused:
    """The executor declined (or never answered): nothing of the answer reached the user."""


_REFUSED = _Refused()


def _serves(info: PeerInfo, model: str) -> bool:
    return any(model in ("auto", m.model) for m in info.models)


#: seconds a peer that does not serve a model it claims is not asked for it
DEMOTE_SECONDS = 60.0
#: Refusals (or silences) in a row from a peer that has never accepted a model it claims,
#: after which it is demoted for that model as if it had said it does not serve it.
UNPROVEN_REFUSALS = 4


class Dispatcher:
    """Local / offload / queue decisions for one node (see the module docs)."""

    def __init__(
        self,
        *,
        overlay: Overlay,
        peer_id: str,
        peers: Callable[[], Mapping[str, PeerInfo]],
        models: list[LocalModel],
        policy: Policy,
        credit: CreditAccount,
        rng: random.Random,
        reward: float = 1.0,
        candidates: int = 3,
        max_hops: int = 2,
        probe_timeout: float = 2.0,
        stall_timeout: float = 30.0,
        keepalive_interval: float = 10.0,
        stakes: Callable[[], Mapping[str, float]] | None = None,
        duels: DuelService | None = None,
        identity: Identity | None = None,
        max_peer_inflight: int = 32,
        max_peers_inflight: int = 64,
        grant_ttl: float = 30.0,
        id_prefix: str | None = None,
    ) -> None:
        self.overlay = overlay
        self.peer_id = peer_id
        self.peers = peers
        self.models = models
        self.policy = policy
        self.credit = credit
        self.rng = rng
        self.reward = reward
        self.candidates = candidates
        self.max_hops = max_hops
        self.probe_timeout = probe_timeout
        self.stall_timeout = stall_timeout
        #: silence after which an executor says it is still at work (keep it below peers'
        #: ``stall_timeout``)
        self.keepalive_interval = keepalive_interval
        #: where peers' stakes come from: the ledger if given, else their heartbeats
        self.stakes = stakes
        #: duel-and-judge (None: never duel)
        self.duels = duels
        #: signs a receipt for every answer given to a peer (None: no receipts)
        self.identity = identity
        #: most requests one peer may have running here at once (a flood is refused)
        self.max_peer_inflight = max_peer_inflight
        #: most requests of all peers together running here at once (identities are free:
        #: a per-peer cap alone bounds nothing)
        self.max_peers_inflight = max_peers_inflight
        #: how long an accepted probe entitles its peer to send that request (seconds)
        self.grant_ttl = grant_ttl
        self._inflight: Counter[str] = Counter()
        #: (peer, model) -> until when the peer is not asked for a model it claims
        self._no_model: dict[tuple[str, str], float] = {}
        #: (peer, model) pairs the peer has accepted at least once (its claim is proven),
        #: and refusals in a row from peers not (yet) proven
        self._proven: dict[tuple[str, str], None] = {}
        self._unproven: Counter[tuple[str, str]] = Counter()
        #: market request ids are ``<prefix>.<counter>``: unique per node run (the node
        #: passes its start time in microseconds), never the user's id, so a payment and
        #: a receipt name exactly one offload
        self._id_prefix = id_prefix if id_prefix is not None else rng.randbytes(6).hex()
        self._ids = itertools.count()
        #: accepted probes: (peer, request id) -> expiry; an offload that is not an offer
        #: needs one (else it is judged as an offer: the policy decides)
        self._grants: dict[tuple[str, str], float] = {}
        self.stats: Counter[str] = Counter()
        #: decode speed (tokens per second of one answer, moving average) measured on the
        #: answers this node received: from its own engine (key: our peer id) and from each
        #: executor; what :attr:`NodeView.speed_ratio` is computed from
        self.speeds: dict[str, float] = {}
        #: seconds from a request's arrival to its dispatch to a peer (the last 1024)
        self.offload_delays: deque[float] = deque(maxlen=1024)
        self._waiting = 0
        self._changed = trio.Event()
        self._closed = False
        self._local_runs: set[trio.CancelScope] = set()

    # ---- state --------------------------------------------------------------------------
    @property
    def running_for_peers(self) -> int:
        """Peers' requests running here now."""
        return sum(self._inflight.values())

    def notify(self) -> None:
        """Something changed (capacity freed, a peer's state): waiting requests re-decide."""
        self._changed.set()
        self._changed = trio.Event()

    def _local(self, model: str) -> list[LocalModel]:
        return [m for m in self.models if model in ("auto", m.name) or model in m.engine.models]

    def view(self, model: str = "auto") -> NodeView:
        """What the policy sees for a request for ``model``."""
        views = []
        for m in self._local(model):
            load = m.engine.load()
            if load.healthy:
                views.append(ModelView(m.name, load, m.target_token_usage))
        return NodeView(tuple(views), self._waiting, self.credit.balance(), self.credit.stake(),
                        speed_ratio=self.speed_ratio(model))

    def speed_ratio(self, model: str = "auto") -> float:
        """How many times faster than our own engine the fastest live peer serving
        ``model`` has answered us (1.0 while either is unmeasured, or none is faster)."""
        own = self.speeds.get(self.peer_id)
        if own is None:
            return 1.0
        live = self.peers()
        best = max((v for p, v in self.speeds.items() if p != self.peer_id and p in live
                    and live[p].status is PeerStatus.ALIVE and _serves(live[p], model)),
                   default=own)
        return max(1.0, best / own)

    def _measured(self, who: str, meter: _Meter) -> None:
        """Fold one answer's decode speed into ``speeds[who]``."""
        speed = meter.speed()
        if speed is not None:
            old = self.speeds.get(who)
            self.speeds[who] = speed if old is None else old + SPEED_WEIGHT * (speed - old)

    def _by_name(self, name: str) -> LocalModel:
        return next(m for m in self.models if m.name == name)

    def network_models(self) -> set[str]:
        """Models served here or by any live peer."""
        names = {m.name for m in self.models}
        for info in self.peers().values():
            names.update(m.model for m in info.models)
        return names

    # ---- the requester side -------------------------------------------------------------
    async def submit(self, request: CompletionRequest, emit: Emit,
                     route: tuple[str, ...] = ()) -> Usage:
        """Serve ``request`` here or elsewhere; push its chunks to ``emit``.

        Everything logged while serving it carries its request id (see wwwserve.log).
        """
        with tracing(request.request_id):
            try:
                return await self._submit(request, emit, route)
            except BaseExceptionGroup as group:
                # the node stopped under the request: its overlay refuses every probe and
                # offload at once, from inside the probe nurseries; say so plainly
                closed, rest = group.split(ClosedError)
                if closed is None or rest is not None:
                    raise
                raise ClosedError("the node is stopping") from None

    async def _submit(self, request: CompletionRequest, emit: Emit,
                      route: tuple[str, ...]) -> Usage:
        if request.model != "auto" and request.model not in self.network_models():
            raise ModelNotFoundError(f"model {request.model!r} is not served in this network")
        arrived = trio.current_time()
        deadline = arrived + request.timeout
        sink = _Sink(emit, request.stream)
        self._waiting += 1
        waiting = True
        try:
            while True:
                if self._closed:
                    raise ClosedError("the node is stopping")
                changed = self._changed
                view = self.view(request.model)
                if not view.models and not self._eligible(request, route):
                    self.stats["no_capacity"] += 1
                    raise NoCapacityError(
                        f"no available engine serves {request.model!r} here or on a live "
                        "peer; retry later", retry_after=1.0)
                name = self.policy.run_locally(view)
                if name is None and self.policy.offload(view, self.rng) \
                        and self.credit.balance() >= self.reward:
                    self._waiting -= 1
                    waiting = False
                    market = self._market_request(request)
                    if self.duels is not None and self.duels.want_duel():
                        usage = await self._offload_duel(market, sink, route, deadline,
                                                         arrived)
                    else:
                        usage = await self._offload(market, sink, route, deadline, arrived)
                    if usage is not None:
                        return usage
                    self._waiting += 1
                    waiting = True
                    view = self.view(request.model)
                if name is None:
                    name = self.policy.queue(view, self.rng)
                    if name is not None:
                        self.stats["queued"] += 1
                if name is not None:
                    self._waiting -= 1
                    waiting = False
                    usage = await self._run_local(self._by_name(name), request, sink, deadline)
                    if usage is not None:
                        self.stats["local"] += 1
                        logger.info("served here on %s (%d tokens)", name,
                                    usage.completion_tokens)
                        return usage
                    self._waiting += 1
                    waiting = True
                # (a node stopping now notifies: the wait ends at once, the loop's top raises)
                self.stats["deferred"] += 1
                with trio.move_on_at(deadline):
                    await changed.wait()
                if trio.current_time() >= deadline:
                    self.stats["deadline"] += 1
                    raise DeadlineExceededError(
                        f"request {request.request_id} not served within {request.timeout:g} s")
        finally:
            if waiting:
                self._waiting -= 1

    def _market_request(self, request: CompletionRequest) -> CompletionRequest:
        """``request`` under a fresh market id of ours (its trace id stays)."""
        market_id = f"{self._id_prefix}.{next(self._ids):x}"
        return replace(request, request_id=market_id, trace_id=request.trace)

    async def _run_local(self, model: LocalModel, request: CompletionRequest, sink: _Sink,
                         deadline: float) -> Usage | None:
        scope = trio.CancelScope()  # cancelled if the node stops under it
        if self._closed:
            scope.cancel()
        self._local_runs.add(scope)
        try:
            meter = _Meter()

            async def emit(chunk: Chunk) -> None:
                meter.note(chunk)
                await sink.send(chunk)

            with scope, trio.fail_after(max(0.0, deadline - trio.current_time())):
                usage = await model.engine.generate(request, emit)
            if scope.cancelled_caught:
                sink.failed("the node is stopping")
                return None
            self._measured(self.peer_id, meter)
            await sink.finish()
            return usage
        except (EngineError, trio.TooSlowError) as exc:
            self.stats["local_failed"] += 1
            sink.failed(f"local engine: {exc!r}")
            return None
        finally:
            self._local_runs.discard(scope)
            self.notify()

    def _eligible(self, request: CompletionRequest, route: tuple[str, ...],
                  exclude: frozenset[str] = frozenset()) -> dict[str, float]:
        """Live peers (not us, not on the route) serving the request's model, by stake."""
        ledger = self.stakes() if self.stakes is not None else None
        return {p: (ledger.get(p, 0.0) if ledger is not None else info.stake)
                for p, info in self.peers().items()
                if p != self.peer_id and p not in route and p not in exclude
                and info.status is PeerStatus.ALIVE and _serves(info, request.model)
                and not self._demoted(p, request.model)}

    # ---- claimed models, verified by use ------------------------------------------------
    def _demoted(self, peer: str, model: str) -> bool:
        until = self._no_model.get((peer, model))
        if until is None:
            return False
        if until <= trio.current_time():
            del self._no_model[(peer, model)]
            return False
        return True

    def _heard(self, peer: str, model: str, reply: ProbeReply | None) -> None:
        """Learn from a probe or offer reply (None: no reply in time) whether ``peer``
        really serves ``model``. A peer may advertise a model it does not serve; its users'
        requests would otherwise wait for it until their deadline. So one that says it
        does not serve it, or that has never accepted it and refused (or not answered)
        :data:`UNPROVEN_REFUSALS` times in a row, is not asked for that model for
        :data:`DEMOTE_SECONDS`. A peer that has accepted the model once is never demoted
        for being busy."""
        if model == "auto":
            return
        key = (peer, model)
        if reply is not None and reply.accept:
            self._proven[key] = None
            self._unproven.pop(key, None)
            while len(self._proven) > 4096:
                del self._proven[next(iter(self._proven))]
            return
        if reply is not None and reply.reason == "model":
            why = "says it does not serve"
        elif key in self._proven:
            return
        else:
            self._unproven[key] += 1
            if self._unproven[key] < UNPROVEN_REFUSALS:
                if len(self._unproven) > 4096:
                    self._unproven.clear()
                return
            why = f"refused {UNPROVEN_REFUSALS} times in a row and never served"
        self._unproven.pop(key, None)
        self._no_model[key] = trio.current_time() + DEMOTE_SECONDS
        while len(self._no_model) > 4096:
            del self._no_model[next(iter(self._no_model))]
        self.stats["model_demoted"] += 1
        logger.info("%s %s %s: not asked for it for %g s", peer, why, model, DEMOTE_SECONDS)

    def _candidates(self, request: CompletionRequest, route: tuple[str, ...],
                    exclude: frozenset[str] = frozenset()) -> list[str]:
        return weighted_sample(self._eligible(request, route, exclude), self.candidates,
                               self.rng)

    async def _probe(self, peers: list[str], request: CompletionRequest,
                     route: tuple[str, ...]) -> str | None:
        probe = encode(Probe(request_id=request.request_id, model=request.model,
                             prompt_tokens=request.prompt_tokens(),
                             max_tokens=request.max_tokens, route=route))
        winner: list[str] = []

        async def ask(peer: str, scope: trio.CancelScope) -> None:
            try:
                async with self.overlay.request(peer, PROBE_PROTOCOL, probe,
                                                idle_timeout=self.probe_timeout) as resp:
                    async for data in resp:
                        reply = decode(data, expect=ProbeReply)
                        self._heard(peer, request.model, reply)
                        if reply.accept and not winner:
                            winner.append(peer)
                            scope.cancel()
            except (OverlayError, ProtocolError) as exc:
                logger.debug("probe of %s failed: %s", peer, exc)
                self._heard(peer, request.model, None)

        with trio.move_on_after(self.probe_timeout):
            async with trio.open_nursery() as n:
                for peer in peers:
                    n.start_soon(ask, peer, n.cancel_scope)
        return winner[0] if winner else None

    async def _offload(self, request: CompletionRequest, sink: _SinkLike,
                       route: tuple[str, ...], deadline: float, arrived: float, *,
                       exclude: frozenset[str] = frozenset(),
                       on_start: Callable[[str], object] = lambda executor: None
                       ) -> Usage | None:
        """Offer the request to the first candidate while probing the others.

        The first candidate (drawn by stake) gets the whole request as an *offer*: if it
        accepts, its answer starts one round trip sooner than after a probe. Meanwhile the
        other candidates are probed; if the offer is refused, the request goes to the
        first of them that accepted.
        """
        peers = self._candidates(request, route, exclude)
        if not peers:
            self.stats["no_candidates"] += 1
            return None

        def started(executor: str) -> None:
            probe_scope.cancel()
            on_start(executor)

        accepted: list[str] = []
        probes_done = trio.Event()
        probe_scope = trio.CancelScope()

        async def probe_the_rest() -> None:
            with probe_scope:
                winner = await self._probe(peers[1:], request, route)
                if winner is not None:
                    accepted.append(winner)
            probes_done.set()

        # the attempts run in the nursery's body: an error they raise (a broken stream) is
        # kept and raised bare afterwards, not wrapped in an exception group
        failure: WWWServeError | None = None
        outcome: Usage | _Refused | None = _REFUSED
        async with trio.open_nursery() as nursery:
            if len(peers) > 1:
                nursery.start_soon(probe_the_rest)
            else:
                probes_done.set()
            try:
                outcome = await self._attempt(peers[0], request, sink, route, deadline,
                                              arrived, offer=True, on_accept=started)
                if isinstance(outcome, _Refused):
                    with trio.move_on_at(deadline):
                        await probes_done.wait()
                    if accepted:
                        outcome = await self._attempt(accepted[0], request, sink, route,
                                                      deadline, arrived, offer=False,
                                                      on_accept=on_start)
            except WWWServeError as exc:
                failure = exc
            finally:
                probe_scope.cancel()
        if failure is not None:
            raise failure
        if isinstance(outcome, _Refused):
            self.stats["probes_refused"] += 1
            return None
        return outcome

    async def _offload_duel(self, request: CompletionRequest, sink: _Sink,
                            route: tuple[str, ...], deadline: float, arrived: float
                            ) -> Usage | None:
        """Offload ``request`` as a duel: to a first executor as usual and, once it accepts,
        a copy (fresh request id) to a second one; the user gets the first answer, and both
        go to :meth:`DuelService.judge <wwwserve.duel.service.DuelService.judge>` in the
        background (every step there has a deadline)."""
        from ..duel.service import Answer

        duels = self.duels
        assert duels is not None
        race = _Race(sink, request.stream)
        first, second = _Tap(race), _Tap(race, copy=True)
        copy = replace(request, request_id=self.rng.randbytes(8).hex(), trace_id="")
        self.stats["duels"] += 1
        logger.info("duelled: a copy goes out as request %s", copy.request_id)

        async def run(tap: _Tap, req: CompletionRequest, exclude: frozenset[str],
                      then: Callable[[str], object]) -> None:
            def accepted(executor: str) -> None:
                tap.executor = executor
                then(executor)

            usage = await self._offload(req, tap, route, deadline, arrived, exclude=exclude,
                                        on_start=accepted)
            await tap.done(usage)

        async def duel() -> None:
            async with trio.open_nursery() as nursery:
                def launch_second(executor: str) -> None:
                    nursery.start_soon(run, second, copy, frozenset({executor}),
                                       lambda _: None)

                await run(first, request, frozenset(), launch_second)
            race.decided.set()  # both are over: if nobody reached the user, say so
            if first.executor is None or second.executor is None:
                self.stats["duels_unmatched"] += 1
                return
            await duels.judge(request, Answer(first.executor, first.text, first.receipt_envelope),
                              Answer(second.executor, second.text, second.receipt_envelope),
                              route)

        duels.spawn(duel)
        try:
            with trio.move_on_at(deadline):
                await race.decided.wait()
        finally:
            race.closed = True
        user = race.user
        if user is None:
            return None
        if user.usage is not None:
            await sink.finish()
            return user.usage
        sink.failed(f"executor {(user.executor or '?')[-8:]} did not finish its answer")
        return None

    async def _attempt(self, executor: str, request: CompletionRequest, sink: _SinkLike,
                       route: tuple[str, ...], deadline: float, arrived: float, *,
                       offer: bool, on_accept: Callable[[str], object] = lambda executor: None
                       ) -> Usage | _Refused | None:
        """Send the request to ``executor`` and stream its answer into ``sink``.

        Returns the usage, :data:`_REFUSED` if the executor declined (nothing reached the
        user), or None if it failed after accepting.
        """
        payload = encode(Offload(request=encode(request), route=(*route, self.peer_id),
                                 hops=len(route) + 1, offer=offer))
        sent = trio.current_time()
        usage: Usage | None = None
        started = False
        meter = _Meter()
        try:
            with trio.move_on_at(deadline):
                idle = min(self.stall_timeout, max(0.001, deadline - trio.current_time()))
                async with self.overlay.request(executor, OFFLOAD_PROTOCOL, payload,
                                                idle_timeout=idle) as resp:
                    frames = resp.__aiter__()
                    reply = None
                    with trio.move_on_after(self.probe_timeout):
                        reply = decode(await anext(frames), expect=ProbeReply)
                    self._heard(executor, request.model, reply)
                    if reply is None or not reply.accept:
                        return _REFUSED
                    started = True
                    on_accept(executor)
                    self.offload_delays.append(sent - arrived)
                    async for data in frames:
                        msg = decode(data)
                        if not isinstance(msg, Chunk):
                            raise ProtocolError(f"unexpected {msg.TYPE!r} in an answer")
                        if msg == _KEEPALIVE:
                            continue  # the executor is alive, the answer not moving yet
                        meter.note(msg)
                        await sink.send(msg)
                        if msg.finish_reason is not None:
                            usage = msg.usage or Usage()
                            break
                    if usage is not None:
                        # the answer is whole: hand it over now. The executor's receipt
                        # and the end of its stream follow at once; one that does not
                        # send them soon is not waited for as long as for a stalled answer
                        await sink.finish()
                        with trio.move_on_after(self.probe_timeout) as tail:
                            async for data in frames:
                                if not isinstance(decode(data), Signed):
                                    raise ProtocolError("more after the end of an answer")
                                sink.receipt(data)  # the executor's word on its answer
                        if tail.cancelled_caught:
                            logger.warning("executor %s did not end its stream after a "
                                           "whole answer", executor[-8:])
        except StopAsyncIteration:
            return _REFUSED  # the executor closed the stream without answering
        except (OverlayError, ProtocolError) as exc:
            if not started:
                logger.debug("%s to %s failed: %s", "offer" if offer else "offload",
                             executor[-8:], exc)
                return _REFUSED
            if usage is None:
                self.stats["offload_failed"] += 1
                sink.failed(f"executor {executor[-8:]}: {exc}")
                return None
            # the whole answer came (and reached the user): it counts, and is paid for
            logger.warning("executor %s broke its stream after a whole answer: %s",
                           executor[-8:], exc)
        if not started:
            return _REFUSED  # the deadline passed before the executor answered
        if usage is None:
            self.stats["offload_failed"] += 1
            sink.failed(f"executor {executor[-8:]} ended without finishing")
            return None
        self._measured(executor, meter)
        if self.credit.pay(executor, self.reward, request.request_id):
            self.stats["paid"] += 1
        self.stats["duel_copies" if sink.duel_copy else "offloaded"] += 1
        if sink.duel_copy:
            logger.info("duel copy %s served by %s (%d tokens)", request.request_id,
                        executor, usage.completion_tokens)
        else:
            logger.info("offloaded: served by %s (%d tokens)", executor,
                        usage.completion_tokens)
        return usage

    # ---- the executor side --------------------------------------------------------------
    def serve(self) -> None:
        """Answer peers' probes and offloaded requests on the overlay."""
        self.overlay.serve(PROBE_PROTOCOL, self._on_probe)
        self.overlay.serve(OFFLOAD_PROTOCOL, self._on_offload)

    def _accepts(self, model: str, route: tuple[str, ...]) -> str | None:
        if self.peer_id in route or len(route) > self.max_hops:
            return None
        return self.policy.accept(self.view(model), self.rng)

    def _grant(self, peer: str, request_id: str) -> None:
        now = trio.current_time()
        if len(self._grants) >= 4096:
            for key in [k for k, t in self._grants.items() if t <= now] or \
                    [next(iter(self._grants))]:
                del self._grants[key]
        self._grants[(peer, request_id)] = now + self.grant_ttl

    def _granted(self, peer: str, request_id: str) -> bool:
        expiry = self._grants.pop((peer, request_id), None)
        return expiry is not None and expiry > trio.current_time()

    def _refusal(self, peer: str) -> str | None:
        """Why ``peer`` may not have one more request run here now, if it may not: too
        many of its own or of all peers' running, or it cannot pay for them."""
        if self._inflight[peer] >= self.max_peer_inflight or \
                self.running_for_peers >= self.max_peers_inflight:
            self.stats["flood_refused"] += 1
            return "too many requests"
        if not self.credit.can_serve(peer, self.reward, self._inflight[peer]):
            self.stats["unpaid_refused"] += 1
            return "credit"
        return None

    async def _on_probe(self, peer: str, payload: bytes, sender: ResponseSender) -> None:
        probe = decode(payload, expect=Probe)
        refusal = "model" if not self._local(probe.model) else self._refusal(peer)
        name = self._accepts(probe.model, probe.route) if refusal is None else None
        self.stats["probe_accepted" if name else "probe_refused"] += 1
        if name:
            self._grant(peer, probe.request_id)
        await sender.send(encode(ProbeReply(accept=name is not None, model=name or "",
                                            reason="" if name else refusal or "busy")))

    async def _on_offload(self, peer: str, payload: bytes, sender: ResponseSender) -> None:
        off = decode(payload, expect=Offload)
        request = decode(off.request, expect=CompletionRequest)
        with tracing(request.trace):
            await self._execute(peer, off, request, sender)

    async def _execute(self, peer: str, off: Offload, request: CompletionRequest,
                       sender: ResponseSender) -> None:
        if self.peer_id in off.route or off.hops > self.max_hops:
            raise WWWServeError("route loop or hop limit exceeded")
        refusal = "model" if not self._local(request.model) else self._refusal(peer)
        if refusal is not None:
            await sender.send(encode(ProbeReply(accept=False, reason=refusal)))
            return
        self._inflight[peer] += 1
        try:
            await self._run_for(peer, off, request, sender)
        finally:
            self._inflight[peer] -= 1
            if not self._inflight[peer]:
                del self._inflight[peer]

    async def _run_for(self, peer: str, off: Offload, request: CompletionRequest,
                       sender: ResponseSender) -> None:
        if off.offer or not self._granted(peer, request.request_id):
            # an offer, or an offload no accepted probe of ours announced: the policy decides
            accepted = self._accepts(request.model, off.route)
            self.stats["probe_accepted" if accepted else "probe_refused"] += 1
            if accepted is None:
                await sender.send(encode(ProbeReply(accept=False, reason="busy")))
                return
            name = accepted
        else:
            candidates = self.view(request.model).models
            if not candidates:
                raise WWWServeError(f"model {request.model!r} unavailable here")
            name = min(candidates, key=lambda m: (m.load.queued, m.load.token_usage)).name
        await sender.send(encode(ProbeReply(accept=True, model=name)))

        answer = hashlib.sha256()
        engine = self._by_name(name).engine
        sending = trio.Lock()
        last = trio.current_time()

        async def forward(chunk: Chunk) -> None:
            nonlocal last
            answer.update(chunk.text.encode())
            async with sending:
                await sender.send(encode(chunk))
            last = trio.current_time()

        async def keep_alive() -> None:
            nonlocal last
            while True:
                await trio.sleep_until(last + self.keepalive_interval)
                if trio.current_time() >= last + self.keepalive_interval:
                    # an engine reported down gets no keepalive (the requester's stall
                    # timeout then decides), and is looked at again one interval later
                    if engine.load().healthy:
                        async with sending:
                            await sender.send(_KEEPALIVE_BYTES)
                    last = trio.current_time()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_alive)
                try:
                    await engine.generate(request, forward)
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # the keepalive task only ends by cancellation or when the requester left
            # (then generate fails the same way): raise what the engine raised, unwrapped
            raise group.exceptions[0] from None
        finally:
            self.notify()
        if self.identity is not None:
            receipt = AnswerReceipt(requester=peer, request_id=request.request_id,
                                    digest=answer.digest())
            await sender.send(encode(seal(receipt, self.identity)))
        self.stats["accepted"] += 1
        self.credit.earn(peer, self.reward, request.request_id)
        logger.info("executed for %s on %s", peer, name)

    # ---- stake --------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the protocols and re-target the stake every second."""
        self.serve()
        self.credit.set_stake(self.policy.target_stake(self.view()))
        task_status.started()
        try:
            while True:
                await trio.sleep(1.0)
                self.credit.set_stake(self.policy.target_stake(self.view()))
        finally:  # the node is stopping: requests still waiting or running here end now
            self._closed = True
            for scope in list(self._local_runs):
                scope.cancel()
            self.notify()
