"""Running a scenario one way (single, centralized, oracle, decentralized) in virtual time."""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio
from trio.testing import MockClock

from ..config import (
    DuelParams,
    MembershipParams,
    ServerParams,
)
from ..engines import (
    Chunk,
    CompletionRequest,
    Engine,
    EngineLoad,
    Scraped,
    SimEngine,
    Usage,
    get_profile,
)
from ..engines.base import Emit
from ..errors import ConfigError, WWWServeError
from ..market import CreditBook, Draining, FixedStake, ServePeersOnly, get_policy
from ..testing import seed_trio_scheduler
from ..testing.assemble import sim_config, sim_node
from .scenario import CENTRAL_THRESHOLD, STRATEGIES, NodeSpec, Record, Scenario
from .workload import _request, make_workload


# ---- engines ------------------------------------------------------------------------------
class _Recorded:
    """An engine that notes which node ran each request."""

    def __init__(self, engine: SimEngine, name: str, executors: dict[str, str]) -> None:
        self.engine = engine
        self.name = name
        self.executors = executors

    @property
    def models(self) -> tuple[str, ...]:
        return self.engine.models

    def load(self) -> EngineLoad:
        return self.engine.load()

    async def generate(self, request: CompletionRequest, emit: Emit) -> Usage:
        self.executors[request.trace] = self.name  # the id it arrived with
        return await self.engine.generate(request, emit)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await self.engine.run(task_status=task_status)


def _node_model(scenario: Scenario, spec: NodeSpec) -> str:
    """The model a node serves: the scenario's, or with ``auto`` its profile's own."""
    return get_profile(spec.profile).model if scenario.model == "auto" else scenario.model


def _engines(scenario: Scenario, seed: int, executors: dict[str, str]) -> list[_Recorded]:
    return [_Recorded(SimEngine(get_profile(n.profile, n.backend),
                                models=(_node_model(scenario, n),),
                                seed=seed * 1000 + k, stream_interval=256,
                                admission=scenario.admission), n.name, executors)
            for k, n in enumerate(scenario.nodes)]


# ---- strategies ---------------------------------------------------------------------------
def _central_choice(engines: Sequence[_Recorded], origin: int,
                    present: Callable[[int], bool]) -> int:
    if engines[origin].load().token_usage < CENTRAL_THRESHOLD:
        return origin
    return min((k for k in range(len(engines)) if present(k)), key=lambda k: (
        engines[k].load().token_usage, engines[k].load().running + engines[k].load().queued, k))


async def _serve(records: dict[str, Record], request: CompletionRequest, start: float,
                 submit: Callable[[CompletionRequest, Emit], Any]) -> None:
    rec = records[request.request_id]

    async def emit(chunk: Chunk) -> None:
        if rec.first_token is None and chunk.tokens:
            rec.first_token = trio.current_time() - start

    try:
        await submit(request, emit)
        rec.outcome = "ok"
    except WWWServeError as exc:
        rec.outcome = type(exc).__name__
    rec.finish = trio.current_time() - start


async def _run(scenario: Scenario, strategy: str, seed: int,
               progress: Callable[[float], None] | None,
               timelines: Timelines | None = None) -> list[Record]:
    seed_trio_scheduler(seed)
    arrivals = make_workload(scenario, seed)
    executors: dict[str, str] = {}
    engines = _engines(scenario, seed, executors)
    records = {a.request_id: Record(a.request_id, scenario.nodes[a.origin].name, a.time)
               for a in arrivals}
    t0 = [0.0]  # the run's start, once the (simulated) network is up

    def present(k: int) -> bool:
        return scenario.nodes[k].present(trio.current_time() - t0[0])

    async with trio.open_nursery() as nursery:
        for e in engines:
            await nursery.start(e.run)
        submitters: list[Callable[[CompletionRequest, Emit], Any]]
        network: _SimNetwork | None = None
        if strategy == "decentralized":
            network = _SimNetwork(scenario, engines, seed, records)
            await network.start(nursery)
            submitters = [network.submitter(k) for k in range(len(engines))]
        elif strategy == "single":
            submitters = [e.generate for e in engines]
        elif strategy == "oracle":
            def oracle(request: CompletionRequest, emit: Emit) -> Any:
                size = (request.prompt_tokens(), request.planned_tokens)
                best = min((k for k in range(len(engines)) if present(k)), key=lambda k: (
                    engines[k].engine.estimate_completion(*size), k))
                return engines[best].generate(request, emit)
            submitters = [oracle] * len(engines)
        elif strategy == "centralized":
            def central(origin: int) -> Callable[[CompletionRequest, Emit], Any]:
                async def submit(request: CompletionRequest, emit: Emit) -> Usage:
                    choice = _central_choice(engines, origin, present)
                    return await engines[choice].generate(request, emit)
                return submit
            submitters = [central(k) for k in range(len(engines))]
        else:
            raise ConfigError(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
        start = t0[0] = trio.current_time()
        if timelines is not None:
            nursery.start_soon(_sample, scenario, engines, network, start, timelines)
        async with trio.open_nursery() as users:
            if network is not None:
                network.schedule(users, start)
            for a in arrivals:
                await trio.sleep_until(start + a.time)
                if progress is not None:
                    progress(a.time)
                users.start_soon(_serve, records, _request(scenario, a), start,
                                 submitters[a.origin])
        nursery.cancel_scope.cancel()
    if network is not None:
        network.close()
    for rec in records.values():
        rec.executor = executors.get(rec.request_id)
    return [records[a.request_id] for a in arrivals]


async def _sample(scenario: Scenario, engines: list[_Recorded], network: _SimNetwork | None,
                  start: float, timelines: Timelines) -> None:
    """Record every node's load (and, in the network, stake and credit) periodically."""
    for spec in scenario.nodes:
        timelines[spec.name] = []
    while True:
        now = trio.current_time() - start
        for k, spec in enumerate(scenario.nodes):
            load = engines[k].load()
            node = network.nodes[k] if network is not None else None
            stake = node.credit.stake() if node is not None else 0.0
            credit = node.credit.balance() if node is not None else 0.0
            if node is not None and node.ledger is not None:  # the chain's, not pending
                st = node.ledger.chain.state
                stake = st.stake(node.peer_id) / 1e6
                credit = (st.balance(node.peer_id) + st.unbonding_total(node.peer_id)) / 1e6
            timelines[spec.name].append([round(now, 3), round(load.token_usage, 4),
                                         load.running, load.queued, round(stake, 3),
                                         round(credit, 3)])
        await trio.sleep(TIMELINE_INTERVAL)


class _SimNetwork:
    """The decentralized world: real nodes over a memory network, joining and leaving."""

    def __init__(self, scenario: Scenario, engines: list[_Recorded], seed: int,
                 records: dict[str, Record]) -> None:
        self.scenario = scenario
        self.engines = engines
        self.seed = seed
        self.records = records
        self.nodes: list[Any] = [None] * len(engines)
        self.up = [trio.Event() for _ in engines]
        #: each node's policy, drained when it leaves
        self.drains: list[Any] = [None] * len(engines)
        self.scopes: list[trio.CancelScope] = [trio.CancelScope() for _ in engines]
        self.book = CreditBook(shared=True)
        self.genesis: Any = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if scenario.ledger:
            from ..clock import SIM_EPOCH
            from ..ledger import Allocation, Genesis, micro

            credit = micro(scenario.initial_credit)
            self.genesis = Genesis(
                network="sim", time=SIM_EPOCH, slot_length=2.0,
                duel_loser_ppm=round(scenario.duel_loser_penalty * 1e6),
                duel_minority_ppm=round(scenario.duel_minority_penalty * 1e6),
                allocations=tuple(Allocation(self.identity(k).peer_id, credit - credit // 10,
                                             credit // 10) for k in range(len(engines))))
            self._tmp = tempfile.TemporaryDirectory(prefix="wwwserve-sim-")

    def identity(self, k: int) -> Any:
        """Provider ``k``'s identity (deterministic for the seed)."""
        from ..identity import Identity

        name = self.scenario.nodes[k].name
        return Identity.from_seed(random.Random(f"{self.seed}:id:{name}").randbytes(32))

    def close(self) -> None:
        """Remove the ledger's block files."""
        if self._tmp is not None:
            self._tmp.cleanup()

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the network and the nodes that are in from the beginning."""
        self.net = await nursery.start(_network, self.seed)
        self.nursery = nursery
        for k, spec in enumerate(self.scenario.nodes):
            if spec.join_at == 0:
                await self.join(k)
        # virtual time: heartbeats spread, stakes are re-targeted, models reach peer tables
        await trio.sleep(10.0)
        present = [n for n in self.nodes if n is not None]
        if not all(len(n.peers) == len(present) - 1 for n in present):
            raise WWWServeError("the simulated network did not form within 10 s")

    async def join(self, k: int) -> None:
        """Create node ``k`` and start it (bootstrapping through node 0)."""
        scenario, spec = self.scenario, self.scenario.nodes[k]
        ident = self.identity(k)
        boot = (self.nodes[0].addresses[0],) if k else ()
        cfg = sim_config(
            spec.name, _node_model(scenario, spec),
            membership=MembershipParams(heartbeat_interval=1.0, suspect_timeout=3.0,
                                        peer_timeout=6.0),
            bootstrap=boot,
            server_params=ServerParams(offload_frequency=spec.offload_frequency,
                                       queue_frequency=spec.queue_frequency,
                                       accept_frequency=spec.accept_frequency,
                                       policy=spec.policy),
            target_token_usage=spec.target_token_usage, duel=DuelParams(p_inspect=spec.p_inspect),
            data_dir=Path(self._tmp.name) / spec.name if self._tmp is not None else None)
        policy = get_policy(cfg.server_params)
        if not spec.run_own:
            policy = ServePeersOnly(policy, spec.accept_frequency)
        if spec.stake is not None:
            policy = FixedStake(policy, spec.stake)
        self.drains[k] = Draining(policy)
        engine: Engine = self.engines[k]
        if scenario.scrape_interval > 0:  # the node reads the load as a real one does
            engine = Scraped(engine, scenario.scrape_interval)
        node = sim_node(cfg, identity=ident, network=self.net, policy=self.drains[k],
                        engines={_node_model(scenario, spec): engine},
                        credit=None if self.genesis is not None
                        else self.book.open(ident.peer_id, 1e9, 0.0), genesis=self.genesis,
                        rng=random.Random(f"{self.seed}:node:{spec.name}"))
        self.nodes[k] = node
        await self.nursery.start(self._run_node, k, node)
        self.up[k].set()

    async def _run_node(self, k: int, node: Any, *,
                        task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with self.scopes[k]:
            await node.run(task_status=task_status)

    async def leave(self, k: int) -> None:
        """Leave gracefully: take no new work, finish what is running, then go."""
        node = self.nodes[k]
        self.drains[k].drain()
        node.credit.set_stake(0.0)
        name = self.scenario.nodes[k].name
        while True:  # bounded by the run's drain time: every request has a deadline
            load = self.engines[k].load()
            mine = any(r.origin == name and r.finish is None for r in self.records.values())
            if not mine and load.running == 0 and load.queued == 0:
                break
            await trio.sleep(1.0)
        self.scopes[k].cancel()

    def schedule(self, nursery: trio.Nursery, start: float) -> None:
        """Joins and leaves at their times (relative to ``start``)."""
        async def at(t: float, action: Callable[[int], Any], k: int) -> None:
            await trio.sleep_until(start + t)
            await action(k)

        for k, spec in enumerate(self.scenario.nodes):
            if spec.join_at > 0:
                nursery.start_soon(at, spec.join_at, self.join, k)
            if spec.leave_at is not None:
                nursery.start_soon(at, spec.leave_at, self.leave, k)

    def submitter(self, k: int) -> Callable[[CompletionRequest, Emit], Any]:
        async def submit(request: CompletionRequest, emit: Emit) -> Usage:
            await self.up[k].wait()
            usage: Usage = await self.nodes[k].submit(request, emit)
            return usage
        return submit


async def _network(seed: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    from ..overlay import MemoryNetwork

    async with MemoryNetwork(seed=seed, latency=0.02) as net:
        task_status.started(net)
        await trio.sleep_forever()


Timelines = dict[str, list[list[float]]]
#: Seconds of simulated time between two timeline samples.
TIMELINE_INTERVAL = 5.0


def run_strategy(scenario: Scenario, strategy: str, seed: int = 0, *,
                 progress: Callable[[float], None] | None = None,
                 timelines: Timelines | None = None) -> list[Record]:
    """Serve the scenario's workload with ``strategy`` in virtual time; one record each.

    With ``timelines``, it is filled per node with samples every ``TIMELINE_INTERVAL``
    seconds: ``[time, token_usage, running, queued, stake, credit]`` (stake and credit are
    the node's own in the decentralized strategy, 0 in the others).
    """
    return trio.run(_run, scenario, strategy, seed, progress, timelines,
                    clock=MockClock(autojump_threshold=0))
