"""The requester's side of the market: decide where each user request runs, attempt, bill.

A user's request is decided when it arrives; if the policy says neither run, offload nor
queue, it waits for something to change (a local request finishing, a peer's heartbeat)
and is decided again, until its deadline. Offloading draws ``candidates`` peers by stake
(``weighted_sample()``) among live peers serving the model, offers the
request to the first while probing the others, and streams the answer of the first that
accepts back (``RequesterStream`` says what each frame means).

Failures: an executor that breaks or stalls (no chunk for ``stall_timeout``) is abandoned
and the request decided again while its deadline allows. Streamed requests whose tokens
already reached the user cannot be retried: they end with ``StreamBrokenError``.
Non-streamed requests are buffered per attempt, so a failed attempt leaves no trace.
An answer counts once its last chunk (with its usage) arrived: if the executor's stream then
breaks, or its receipt and end do not follow within ``probe_timeout``, the answer stands.
A request is paid for once, only after it completed, by request id.

A local engine that fails a request (``EngineError``) rests for that
request with capped exponential backoff (``backoff``); meanwhile the request fails over
to a peer whatever the policy's offload frequency, and after a few failures with nobody
else to serve it the user gets the engine's verdict (a 429 stays a 429).
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Protocol

import trio

from ..config import DispatchParams
from ..engines import Chunk, CompletionRequest, Emit, Usage
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
    leaves,
)
from ..log import tracing
from ..membership import PeerStatus
from ..overlay import Overlay
from ..sampling import weighted_sample
from .backoff import Backoff, BackoffParams
from .claims import Claims
from .local import Local, LocalModel, serves
from .messages import OFFLOAD_PROTOCOL, PROBE_PROTOCOL
from .protocol import (
    Accepted,
    Broken,
    Data,
    ProbeExchange,
    Receipt,
    Refused,
    RequesterStream,
    offload_request,
    probe_request,
)
from .speed import Meter

__all__ = ["REFUSED", "AnswerSink", "DuelRunner", "Requester", "UserSink"]

logger = logging.getLogger(__name__)


class AnswerSink(Protocol):
    """Where one attempt's answer goes: the user (``UserSink``) or a duel's tap."""

    #: the answer is a duel's second copy (counted apart from offloaded requests)
    duel_copy: bool

    async def send(self, chunk: Chunk) -> None:
        """One chunk of the answer."""
        ...

    async def finish(self) -> None:
        """The answer is whole."""
        ...

    def failed(self, why: str) -> None:
        """The attempt failed after it had started (raise if the user already saw part)."""
        ...

    def receipt(self, envelope: bytes) -> None:
        """The executor's signed receipt over the answer."""
        ...


class UserSink:
    """The user's side of one request across attempts (buffers non-streamed answers)."""

    def __init__(self, emit: Emit, stream: bool) -> None:
        self._emit = emit
        self._stream = stream
        self._buffer: list[Chunk] = []
        self.committed = False
        self.duel_copy = False

    async def send(self, chunk: Chunk) -> None:
        """Stream ``chunk`` to the user, or keep it until the answer is whole."""
        if self._stream:
            self.committed = True
            await self._emit(chunk)
        else:
            self._buffer.append(chunk)

    async def finish(self) -> None:
        """Hand a buffered answer to the user."""
        for chunk in self._buffer:
            await self._emit(chunk)
        self._buffer.clear()

    def receipt(self, envelope: bytes) -> None:
        """Ignored: only duels keep receipts."""

    def failed(self, why: str) -> None:
        """Forget a buffered attempt; a streamed one that reached the user is broken."""
        self._buffer.clear()
        if self.committed:
            raise StreamBrokenError(f"the answer broke off after it had started: {why}")


class _Refused:
    """The executor declined (or never answered): nothing of the answer reached the user."""


#: what an attempt returns when the executor declined
REFUSED = _Refused()


class DuelRunner(Protocol):
    """Duel-and-judge as the requester sees it (see ``wwwserve.duel.race``)."""

    def want_duel(self) -> bool:
        """Duel this offloaded request?"""
        ...

    async def offload_duel(self, requester: Requester, request: CompletionRequest,
                           sink: UserSink, route: tuple[str, ...], deadline: float,
                           arrived: float) -> Usage | None:
        """Offload ``request`` to two executors; the user gets the first answer."""
        ...


#: whole answers from peers a requester remembers (``Requester.delivered``)
DELIVERED_RECORD = 4096


class Requester:
    """Placement of this node's users' requests (see the module docs)."""

    def __init__(self, local: Local, *, overlay: Overlay, params: DispatchParams,
                 stakes: Callable[[], Mapping[str, float]] | None = None,
                 duels: DuelRunner | None = None, id_prefix: str | None = None,
                 backoff: BackoffParams | None = None) -> None:
        self.local = local
        #: how a request retries a local engine that failed it
        self.backoff = backoff if backoff is not None else BackoffParams()
        self.overlay = overlay
        self.params = params
        #: where peers' stakes come from: the ledger if given, else their heartbeats
        self.stakes = stakes
        #: duel-and-judge (None: never duel)
        self.duels = duels
        self.stats = local.stats
        self.rng = local.rng
        self.claims = Claims(local.stats)
        #: market request ids are ``<prefix>.<counter>``: unique per node run (the node
        #: passes its start time in microseconds), never the user's id, so a payment and
        #: a receipt name exactly one offload
        self._id_prefix = id_prefix if id_prefix is not None else local.rng.randbytes(6).hex()
        self._ids = itertools.count()
        #: seconds from a request's arrival to its dispatch to a peer (the last 1024)
        self.offload_delays: deque[float] = deque(maxlen=1024)
        #: (executor, market request id) of the last whole answers received from peers:
        #: what an audit of this node's payments checks the chain against
        self.delivered: deque[tuple[str, str]] = deque(maxlen=DELIVERED_RECORD)
        self._local_runs: set[trio.CancelScope] = set()

    def network_models(self) -> set[str]:
        """Models served here or by any live peer."""
        names = {m.name for m in self.local.models}
        for info in self.local.peers().values():
            names.update(m.model for m in info.models)
        return names

    def close(self) -> None:
        """The node is stopping: requests still waiting or running here end now."""
        self.local.closed = True
        for scope in list(self._local_runs):
            scope.cancel()
        self.local.notify()

    # ---- deciding ------------------------------------------------------------------------
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
                if not all(isinstance(e, ClosedError) for e in leaves(group)):
                    raise
                raise ClosedError("the node is stopping") from None

    async def _submit(self, request: CompletionRequest, emit: Emit,
                      route: tuple[str, ...]) -> Usage:
        local = self.local
        policy = local.policy
        if request.model != "auto" and request.model not in self.network_models():
            raise ModelNotFoundError(f"model {request.model!r} is not served in this network")
        arrived = trio.current_time()
        deadline = arrived + request.timeout
        sink = UserSink(emit, request.stream)
        backoff = Backoff(self.backoff)
        local.waiting += 1
        waiting = True
        try:
            while True:
                if local.closed:
                    raise ClosedError("the node is stopping")
                changed = local.changed
                now = trio.current_time()
                full = local.view(request.model)
                if not full.models and not self._eligible(request, route):
                    self.stats["no_capacity"] += 1
                    raise NoCapacityError(
                        f"no available engine serves {request.model!r} here or on a live "
                        "peer; retry later", retry_after=1.0)
                if backoff.exhausted and not self._eligible(request, route):
                    self.stats["engine_gave_up"] += 1
                    raise backoff.error(
                        f"the local engine failed this request {backoff.failures} times "
                        "and no peer serves its model")
                view = backoff.filter(full, now)
                name = policy.run_locally(view)
                # a local engine that failed this request and rests: fail over to a peer
                # whatever the policy's offload frequency (the alternative is failing it)
                failover = bool(backoff.failures) and not view.models
                if name is None and (failover or policy.offload(view, self.rng)) \
                        and local.credit.balance() >= self.params.reward:
                    local.waiting -= 1
                    waiting = False
                    market = self._market_request(request)
                    if self.duels is not None and self.duels.want_duel():
                        usage = await self.duels.offload_duel(self, market, sink, route,
                                                              deadline, arrived)
                    else:
                        usage = await self.offload(market, sink, route, deadline, arrived)
                    if usage is not None:
                        return usage
                    local.waiting += 1
                    waiting = True
                    view = backoff.filter(local.view(request.model), trio.current_time())
                if name is None:
                    name = policy.queue(view, self.rng)
                    if name is not None:
                        self.stats["queued"] += 1
                if name is not None:
                    local.waiting -= 1
                    waiting = False
                    usage = await self._run_local(local.by_name(name), request, sink, deadline,
                                                  backoff)
                    if usage is not None:
                        self.stats["local"] += 1
                        logger.info("served here on %s (%d tokens)", name,
                                    usage.completion_tokens)
                        return usage
                    local.waiting += 1
                    waiting = True
                # (a node stopping now notifies: the wait ends at once, the loop's top raises)
                self.stats["deferred"] += 1
                wake = backoff.wake_at(trio.current_time())
                with trio.move_on_at(deadline if wake is None else min(deadline, wake)):
                    await changed.wait()
                if trio.current_time() >= deadline:
                    self.stats["deadline"] += 1
                    why = f"; the local engine said: {backoff.last}" if backoff.last else ""
                    raise DeadlineExceededError(
                        f"request {request.request_id} not served within "
                        f"{request.timeout:g} s{why}")
        finally:
            if waiting:
                local.waiting -= 1

    def _market_request(self, request: CompletionRequest) -> CompletionRequest:
        """``request`` under a fresh market id of ours (its trace id stays)."""
        market_id = f"{self._id_prefix}.{next(self._ids):x}"
        return replace(request, request_id=market_id, trace_id=request.trace)

    async def _run_local(self, model: LocalModel, request: CompletionRequest, sink: UserSink,
                         deadline: float, backoff: Backoff) -> Usage | None:
        scope = trio.CancelScope()  # cancelled if the node stops under it
        if self.local.closed:
            scope.cancel()
        self._local_runs.add(scope)
        try:
            meter = Meter()

            async def emit(chunk: Chunk) -> None:
                meter.note(chunk, trio.current_time())
                await sink.send(chunk)

            with scope, trio.fail_after(max(0.0, deadline - trio.current_time())):
                usage = await model.generate(request, emit)
            if scope.cancelled_caught:
                sink.failed("the node is stopping")
                return None
            self.local.speeds.measured(self.local.peer_id, meter)
            await sink.finish()
            return usage
        except EngineError as exc:
            self.stats["local_failed"] += 1
            rest = backoff.failed(model.name, exc, trio.current_time(), self.rng)
            logger.info("local engine %s failed (%s); not retried for %.2f s", model.name,
                        exc, rest)
            sink.failed(f"the local engine failed: {exc}")
            return None
        except trio.TooSlowError:
            self.stats["local_failed"] += 1
            sink.failed(f"the request's deadline of {request.timeout:g} s passed")
            return None
        finally:
            self._local_runs.discard(scope)
            self.local.notify()

    def _eligible(self, request: CompletionRequest, route: tuple[str, ...],
                  exclude: frozenset[str] = frozenset()) -> dict[str, float]:
        """Live peers (not us, not on the route) serving the request's model, by stake."""
        ledger = self.stakes() if self.stakes is not None else None
        now = trio.current_time()
        own = self.local.peer_id
        return {p: (ledger.get(p, 0.0) if ledger is not None else info.stake)
                for p, info in self.local.peers().items()
                if p != own and p not in route and p not in exclude
                and info.status is PeerStatus.ALIVE and serves(info, request.model)
                and not self.claims.demoted(p, request.model, now)}

    # ---- offloading ----------------------------------------------------------------------
    async def _probe(self, peers: list[str], request: CompletionRequest,
                     route: tuple[str, ...]) -> str | None:
        probe = probe_request(request, route)
        winner: list[str] = []
        timeout = self.params.probe_timeout

        async def ask(peer: str, scope: trio.CancelScope) -> None:
            exchange = ProbeExchange()
            try:
                async with self.overlay.request(peer, PROBE_PROTOCOL, probe,
                                                idle_timeout=timeout) as resp:
                    async for data in resp:
                        reply = exchange.receive(data)
                        if reply.accept:
                            self.claims.accepted(peer, request.model)
                        else:
                            self.claims.refused(peer, request.model, reply.reason,
                                                trio.current_time())
                        if reply.accept and not winner:
                            winner.append(peer)
                            scope.cancel()
            except (OverlayError, ProtocolError) as exc:
                logger.debug("probe of %s failed: %s", peer, exc)
                if exchange.reply is None:
                    self.claims.refused(peer, request.model, None, trio.current_time())

        with trio.move_on_after(timeout):
            async with trio.open_nursery() as n:
                for peer in peers:
                    n.start_soon(ask, peer, n.cancel_scope)
        return winner[0] if winner else None

    async def offload(self, request: CompletionRequest, sink: AnswerSink,
                      route: tuple[str, ...], deadline: float, arrived: float, *,
                      exclude: frozenset[str] = frozenset(),
                      on_start: Callable[[str], object] = lambda executor: None
                      ) -> Usage | None:
        """Offer the request to the first candidate while probing the others.

        The first candidate (drawn by stake) gets the whole request as an *offer*: if it
        accepts, its answer starts one round trip sooner than after a probe. Meanwhile the
        other candidates are probed; if the offer is refused, the request goes to the
        first of them that accepted. Returns the usage, or None if nobody served it.
        """
        peers = weighted_sample(self._eligible(request, route, exclude),
                                self.params.candidates, self.rng)
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
        outcome: Usage | _Refused | None = REFUSED
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

    async def _attempt(self, executor: str, request: CompletionRequest, sink: AnswerSink,
                       route: tuple[str, ...], deadline: float, arrived: float, *,
                       offer: bool, on_accept: Callable[[str], object] = lambda executor: None
                       ) -> Usage | _Refused | None:
        """Send the request to ``executor`` and stream its answer into ``sink``.

        Returns the usage, ``REFUSED`` if the executor declined (nothing reached the
        user), or None if it failed after accepting.
        """
        params = self.params
        claims = self.claims
        payload = offload_request(request, route, self.local.peer_id, offer=offer)
        sent = trio.current_time()
        stream = RequesterStream()
        started = False
        settled: Usage | None = None
        meter = Meter()
        try:
            with trio.move_on_at(deadline):
                idle = min(params.stall_timeout, max(0.001, deadline - trio.current_time()))
                async with self.overlay.request(executor, OFFLOAD_PROTOCOL, payload,
                                                idle_timeout=idle) as resp:
                    frames = resp.__aiter__()
                    reply = None
                    with trio.move_on_after(params.probe_timeout):
                        reply = stream.receive(await anext(frames))
                    if not isinstance(reply, Accepted):
                        claims.refused(executor, request.model,
                                       reply.reason if isinstance(reply, Refused) else None,
                                       trio.current_time())
                        return REFUSED
                    claims.accepted(executor, request.model)
                    started = True
                    on_accept(executor)
                    self.offload_delays.append(sent - arrived)
                    while not stream.whole:
                        event = stream.receive(await anext(frames))
                        if isinstance(event, Data):
                            meter.note(event.chunk, trio.current_time())
                            if stream.whole:
                                self.delivered.append((executor, request.request_id))
                                # paid before the last chunk reaches the user, with no
                                # checkpoint between: a user who leaves now cannot take
                                # the whole answer unpaid
                                settled = self._settle(executor, request, stream, meter,
                                                       sink)
                            await sink.send(event.chunk)
                        # else a keepalive: the executor is alive, the answer not moving yet
                    # the answer is whole: hand it over now. The executor's receipt and the
                    # end of its stream follow at once; one that does not send them soon is
                    # not waited for as long as for a stalled answer
                    await sink.finish()
                    with trio.move_on_after(params.probe_timeout) as tail:
                        async for data in frames:
                            event = stream.receive(data)
                            if isinstance(event, Receipt):
                                sink.receipt(event.envelope)  # the executor's word on it
                    if tail.cancelled_caught:
                        logger.warning("executor %s did not end its stream after a "
                                       "whole answer", executor[-8:])
        except StopAsyncIteration:
            end = stream.end()
            if isinstance(end, Refused):
                return REFUSED  # the executor closed the stream without answering
            assert isinstance(end, Broken)
            self.stats["offload_failed"] += 1
            sink.failed(f"executor {executor[-8:]} {end.why}")
            return None
        except (OverlayError, ProtocolError) as exc:
            if not started:
                logger.debug("%s to %s failed: %s", "offer" if offer else "offload",
                             executor[-8:], exc)
                return REFUSED
            if not stream.whole:
                self.stats["offload_failed"] += 1
                sink.failed(f"executor {executor[-8:]}: {exc}")
                return None
            # the whole answer came (and reached the user): it counts, and is paid for
            logger.warning("executor %s broke its stream after a whole answer: %s",
                           executor[-8:], exc)
        if not started:
            return REFUSED  # the deadline passed before the executor answered
        if settled is None:
            self.stats["offload_failed"] += 1
            sink.failed(f"executor {executor[-8:]} ended without finishing")
            return None
        return settled

    def _settle(self, executor: str, request: CompletionRequest, stream: RequesterStream,
                meter: Meter, sink: AnswerSink) -> Usage | None:
        """The answer is whole: pay for it (synchronously) and count it; its usage, or None
        if its last chunk came without one.

        The payment rule: a request is paid exactly when its whole answer (the last chunk,
        with its usage) reached this node. One cancelled before that is not paid, however
        much of it was streamed (the executor delivered no whole answer); one whose user
        leaves after it is paid (the user could have had all of it). Only the requester
        signs a payment, so an executor cannot claim pay for work it did not deliver.
        """
        usage = stream.usage
        if usage is None:
            return None
        self.local.speeds.measured(executor, meter)
        if self.local.credit.pay(executor, self.params.reward, request.request_id):
            self.stats["payments_submitted"] += 1
        self.stats["duel_copies" if sink.duel_copy else "offloaded"] += 1
        if sink.duel_copy:
            logger.info("duel copy %s served by %s (%d tokens)", request.request_id,
                        executor, usage.completion_tokens)
        else:
            logger.info("offloaded: served by %s (%d tokens)", executor,
                        usage.completion_tokens)
        return usage

