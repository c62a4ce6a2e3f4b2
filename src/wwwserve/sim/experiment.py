"""Experiments: one workload served three ways, in trio's virtual time.

A :class:`Scenario` (a YAML file: nodes with GPU profiles and policies, a workload, SLO
thresholds) is turned into a deterministic list of requests (:func:`make_workload`), then
served, on identical copies of the simulated engines, by

- ``single``: every node serves only its own users;
- ``centralized``: one global scheduler with fresh, instant metrics, using the WWW.Serve
  authors' rule (keep a request on its own node if that node's ``token_usage`` < 0.6, else
  send it to the node with the lowest ``token_usage``, ties by running + queued);
- ``oracle``: a stronger global scheduler with perfect, instant knowledge: each request goes
  to the engine where it would finish first (:meth:`SimEngine.estimate_completion`);
- ``decentralized``: the real :class:`~wwwserve.node.Node` code (membership gossip, PoS
  offloading, policies, credits) over :class:`~wwwserve.overlay.MemoryNetwork`.

Each run yields one :class:`Record` per request; :func:`summarize` computes SLO attainment
(the share of *all* requests finished within each threshold; a failed request never meets
an SLO), latency percentiles and time to first token.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import gzip
import json
import math
import random
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import trio
from trio.testing import MockClock

from ..clock import trio_wall_clock
from ..config import (
    DuelParams,
    GatewayParams,
    MembershipParams,
    ModelConfig,
    ModelDispatchParams,
    NetworkParams,
    NodeConfig,
    NodeParams,
    ServerParams,
    build_section,
)
from ..engines import Chunk, CompletionRequest, EngineLoad, SimEngine, Usage, get_profile
from ..engines.base import Emit
from ..engines.sim import ADMISSIONS
from ..errors import ConfigError, WWWServeError
from ..market import CreditBook, Draining, FixedStake, ServePeersOnly, get_policy
from ..stats import percentile
from ..testing import seed_trio_scheduler

__all__ = ["STRATEGIES", "NodeSpec", "Record", "Scenario", "list_scenarios", "load_scenario",
           "make_workload", "run_strategy", "summarize"]

STRATEGIES = ("single", "centralized", "oracle", "decentralized")
#: The authors' centralized rule keeps a request local below this token usage.
CENTRAL_THRESHOLD = 0.6


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSpec:
    """One provider in a scenario: its GPU profile, its users' arrival rates, its policy."""

    name: str
    profile: str = "a100-80g/qwen3-8b"
    backend: str = "flashinfer"
    rate: float = 0.05
    rate_after_switch: float | None = None
    offload_frequency: float = 0.8
    queue_frequency: float = 0.2
    accept_frequency: float = 0.8
    target_token_usage: float = 0.6
    #: the provider's policy: a registered name (default_sglang, speed_aware, ...) or a
    #: ``package.module:Class`` path (decentralized only)
    policy: str = "default_sglang"
    #: trace workloads: where in the trace hour this node's users start (seconds) and the
    #: share of the trace's requests they send
    trace_shift: float = 0.0
    trace_scale: float = 1.0
    #: dynamic participation: when the provider joins and (gracefully) leaves; its users
    #: send requests only while it is in
    join_at: float = 0.0
    leave_at: float | None = None
    #: a fixed stake (credits) instead of the policy's load-driven one (decentralized only)
    stake: float | None = None
    #: share of this node's offloaded requests it duels (the scheduling studies run
    #: without duels, like the paper's SLO experiments; duels need judges' engines too)
    p_inspect: float = 0.0
    #: the class this provider belongs to in credit curves (default: its profile)
    group: str = ""
    #: False: its users' requests always go to the market (offloaded, or queued here when
    #: no peer accepts) while it still takes peers' work (quality studies: every request
    #: is then a candidate for a duel)
    run_own: bool = True

    @property
    def label(self) -> str:
        """The provider's class for per-class figures."""
        return self.group or (self.profile if self.backend == "flashinfer"
                              else f"{self.profile} ({self.backend})")

    def present(self, t: float) -> bool:
        """True if the provider is in the network at ``t``."""
        return self.join_at <= t and (self.leave_at is None or t < self.leave_at)


SWEEPABLE = ("offload_frequency", "queue_frequency", "accept_frequency",
             "target_token_usage", "stake")


@dataclass(frozen=True, slots=True, kw_only=True)
class Sweep:
    """Run the decentralized strategy once per value of one node setting."""

    param: str
    values: tuple[float, ...]
    #: the nodes the value applies to (default: all)
    nodes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.param not in SWEEPABLE:
            raise ConfigError(f"param: must be one of {', '.join(SWEEPABLE)}, got "
                              f"{self.param!r}")
        if not self.values:
            raise ConfigError("values: give at least one value")

    def apply(self, scenario: Scenario, value: float) -> Scenario:
        """``scenario`` with the swept setting at ``value``."""
        change: dict[str, Any] = {self.param: value}
        nodes = tuple(dataclasses.replace(n, **change)
                      if not self.nodes or n.name in self.nodes else n
                      for n in scenario.nodes)
        return dataclasses.replace(scenario, nodes=nodes, sweep=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """An experiment: nodes, a Poisson workload per node, SLO thresholds (seconds)."""

    name: str
    description: str = ""
    #: the model users ask for; ``auto`` lets any node's model answer (heterogeneous models)
    model: str = "Qwen/Qwen3-8B"
    #: ``poisson`` (rates per node) or ``azure-conv`` (the Azure 2023 conversation trace)
    workload: str = "poisson"
    duration: float = 600.0
    switch_at: float | None = None
    prompt_tokens: int = 512
    output_tokens_mean: int = 256
    output_tokens_max: int = 8192
    slo_thresholds: tuple[float, ...] = (10.0, 30.0, 60.0)
    drain: float = 1800.0
    nodes: tuple[NodeSpec, ...] = field(default_factory=tuple)
    sweep: Sweep | None = None
    #: run the decentralized world on a private ledger (payments, stakes and duel
    #: settlements on chain; timelines then show the chain's credit and stake)
    ledger: bool = False
    #: each provider's credit at genesis (a tenth of it staked) when ``ledger`` is set
    initial_credit: float = 1000.0
    #: the genesis' share of a duel loser's stake that goes to the winner (authors: 1.0)
    #: and of a minority judge's stake that goes to the majority (authors: 0.2)
    duel_loser_penalty: float = 1.0
    duel_minority_penalty: float = 0.2
    #: the strategies this scenario runs by default (empty: the command's)
    strategies: tuple[str, ...] = ()
    #: the simulated engines' admission rule: ``sglang`` (optimistic, with retraction, as
    #: SGLang does) or ``reserve`` (a request's whole KV footprint reserved at admission)
    admission: str = "sglang"

    def __post_init__(self) -> None:
        if self.admission not in ADMISSIONS:
            raise ConfigError(f"admission: must be one of {', '.join(ADMISSIONS)}, got "
                              f"{self.admission!r}")
        for st in self.strategies:
            if st not in STRATEGIES:
                raise ConfigError(f"strategies: unknown strategy {st!r}; one of "
                                  f"{', '.join(STRATEGIES)}")
        for name in ("duel_loser_penalty", "duel_minority_penalty"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        if not self.initial_credit > 0:
            raise ConfigError(f"initial_credit: must be > 0, got {self.initial_credit}")
        if len(self.nodes) < 2:
            raise ConfigError("nodes: a scenario needs at least 2 nodes")
        if len({n.name for n in self.nodes}) != len(self.nodes):
            raise ConfigError("nodes: names must be unique")
        first = self.nodes[0]
        if first.join_at != 0 or first.leave_at is not None:
            raise ConfigError("nodes[0]: the first node bootstraps the others; it must be in "
                              "from the start to the end (no join_at, no leave_at)")
        for i, n in enumerate(self.nodes):
            if not 0 <= n.join_at < (n.leave_at if n.leave_at is not None else self.duration):
                raise ConfigError(f"nodes[{i}]: need 0 <= join_at < leave_at <= duration")
            try:
                get_policy(ServerParams(policy=n.policy))
            except ConfigError as exc:
                raise ConfigError(f"nodes[{i}].{str(exc).removeprefix('server_params.')}"
                                  ) from None
        if self.workload not in ("poisson", "azure-conv"):
            raise ConfigError(f"workload: must be poisson or azure-conv, got {self.workload!r}")


@dataclass(frozen=True, slots=True)
class Arrival:
    """One user request of the workload."""

    request_id: str
    origin: int
    time: float
    prompt_tokens: int
    output_tokens: int


@dataclass(slots=True)
class Record:
    """What happened to one request (times in seconds from the start of the run)."""

    request_id: str
    origin: str
    submit: float
    executor: str | None = None
    first_token: float | None = None
    finish: float | None = None
    outcome: str = "pending"

    @property
    def latency(self) -> float | None:
        """End-to-end latency, for a request that completed."""
        return None if self.finish is None or self.outcome != "ok" else self.finish - self.submit


# ---- scenarios ----------------------------------------------------------------------------
def _scenario_dir() -> Any:
    return resources.files("wwwserve.sim").joinpath("scenarios")


def list_scenarios() -> dict[str, str]:
    """Shipped scenarios: name -> description."""
    out = {}
    for entry in sorted(_scenario_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            s = load_scenario(entry.name[:-5])
            out[s.name] = s.description
    return out


def load_scenario(name_or_path: str) -> Scenario:
    """A shipped scenario by name, or a scenario YAML file by path."""
    import yaml

    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        text, source = path.read_text(), str(path)
    else:
        entry = _scenario_dir().joinpath(f"{name_or_path}.yaml")
        if not entry.is_file():
            known = ", ".join(sorted(e.name[:-5] for e in _scenario_dir().iterdir()
                                     if e.name.endswith(".yaml")))
            raise ConfigError(f"unknown scenario {name_or_path!r}; shipped: {known} "
                              "(or give a path to a scenario .yaml)")
        text, source = entry.read_text(), f"scenario {name_or_path}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    return build_section(Scenario, data, source=source)


# ---- workload -----------------------------------------------------------------------------
def make_workload(scenario: Scenario, seed: int) -> list[Arrival]:
    """Poisson arrivals per node (rates swap at ``switch_at``), deterministic for ``seed``.

    Output lengths are log-normal with the scenario's mean (sigma 0.6), capped at its max;
    prompt lengths vary +-50% around the scenario's mean.
    """
    if scenario.workload == "azure-conv":
        return _trace_workload(scenario, seed)
    arrivals: list[Arrival] = []
    sigma = 0.6
    mu = math.log(max(1, scenario.output_tokens_mean)) - sigma * sigma / 2
    for k, node in enumerate(scenario.nodes):
        rng = random.Random(f"{seed}:arrivals:{node.name}")
        t = node.join_at
        end = min(scenario.duration, node.leave_at or scenario.duration)
        i = 0
        while True:
            switched = scenario.switch_at is not None and t >= scenario.switch_at
            rate = node.rate_after_switch if switched and node.rate_after_switch is not None \
                else node.rate
            if rate <= 0:
                if scenario.switch_at is not None and not switched:
                    t = scenario.switch_at
                    continue
                break
            t += rng.expovariate(rate)
            if t >= end:
                break
            out = max(1, min(scenario.output_tokens_max, round(rng.lognormvariate(mu, sigma))))
            prompt = max(1, round(scenario.prompt_tokens * rng.uniform(0.5, 1.5)))
            arrivals.append(Arrival(f"{node.name}-{i}", k, t, prompt, out))
            i += 1
    arrivals.sort(key=lambda a: (a.time, a.request_id))
    return arrivals


TRACE_HOUR = 3600.0


@functools.cache
def azure_conversation_trace() -> tuple[tuple[float, int, int], ...]:
    """The Azure LLM inference trace 2023, conversation service (one hour, 19,366 requests):
    (seconds from its start, context tokens, generated tokens). CC-BY 4.0, Microsoft; see
    ``wwwserve/sim/data/README.md``."""
    raw = resources.files("wwwserve.sim").joinpath(
        "data/azure_llm_inference_2023_conv.csv.gz").read_bytes()
    rows = []
    start = None
    for line in gzip.decompress(raw).decode().splitlines()[1:]:
        stamp, ctx, gen = line.split(",")
        t = datetime.datetime.fromisoformat(stamp[:26]).timestamp()
        start = t if start is None else start
        rows.append((t - start, int(ctx), int(gen)))
    return tuple(rows)


def _trace_workload(scenario: Scenario, seed: int) -> list[Arrival]:
    """Each node replays the trace hour from its ``trace_shift`` (wrapping around), keeping
    a ``trace_scale`` share of the requests, so the nodes' peaks differ."""
    trace = azure_conversation_trace()
    arrivals = []
    for k, node in enumerate(scenario.nodes):
        rng = random.Random(f"{seed}:trace:{node.name}")
        picked = []
        for t, ctx, gen in trace:
            at = (t - node.trace_shift) % TRACE_HOUR
            if at < scenario.duration and node.present(at) and rng.random() < node.trace_scale:
                picked.append((at, ctx, gen))
        picked.sort()
        for i, (at, ctx, gen) in enumerate(picked):
            arrivals.append(Arrival(f"{node.name}-{i}", k, at, max(1, ctx),
                                    max(1, min(gen, scenario.output_tokens_max))))
    arrivals.sort(key=lambda a: (a.time, a.request_id))
    return arrivals


def _request(scenario: Scenario, a: Arrival) -> CompletionRequest:
    return CompletionRequest(request_id=a.request_id, model=scenario.model,
                             prompt="x" * (4 * a.prompt_tokens), max_tokens=a.output_tokens,
                             ignore_eos=True, stream=True, timeout=scenario.duration
                             + scenario.drain)


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
                size = (request.prompt_tokens(), request.max_tokens)
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
        from ..node import Node

        scenario, spec = self.scenario, self.scenario.nodes[k]
        ident = self.identity(k)
        boot = (self.nodes[0].addresses[0],) if k else ()
        cfg = NodeConfig(
            server_params=ServerParams(offload_frequency=spec.offload_frequency,
                                       queue_frequency=spec.queue_frequency,
                                       accept_frequency=spec.accept_frequency,
                                       policy=spec.policy),
            models=(ModelConfig(model_path=_node_model(scenario, spec), engine="sim",
                                dispatch_params=ModelDispatchParams(
                                    target_token_usage=spec.target_token_usage)),),
            network=NetworkParams(network_id="sim", bootstrap=boot),
            membership=MembershipParams(heartbeat_interval=1.0, suspect_timeout=3.0,
                                        peer_timeout=6.0),
            gateway=GatewayParams(enabled=False), duel=DuelParams(p_inspect=spec.p_inspect),
            node=NodeParams(name=spec.name, data_dir=Path(self._tmp.name) / spec.name)
            if self._tmp is not None else NodeParams(name=spec.name))
        policy = get_policy(cfg.server_params)
        if not spec.run_own:
            policy = ServePeersOnly(policy, spec.accept_frequency)
        if spec.stake is not None:
            policy = FixedStake(policy, spec.stake)
        self.drains[k] = Draining(policy)
        node = Node(cfg, identity=ident, overlay=self.net.node(ident), policy=self.drains[k],
                    engines={_node_model(scenario, spec): self.engines[k]},
                    credit=None if self.genesis is not None
                    else self.book.open(ident.peer_id, 1e9, 0.0), genesis=self.genesis,
                    clock=trio_wall_clock(),
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

    With ``timelines``, it is filled per node with samples every :data:`TIMELINE_INTERVAL`
    seconds: ``[time, token_usage, running, queued, stake, credit]`` (stake and credit are
    the node's own in the decentralized strategy, 0 in the others).
    """
    return trio.run(_run, scenario, strategy, seed, progress, timelines,
                    clock=MockClock(autojump_threshold=0))


# ---- results ------------------------------------------------------------------------------
def summarize(records: Sequence[Record], thresholds: Sequence[float]) -> dict[str, Any]:
    """SLO attainment at each threshold, latency and TTFT statistics, outcomes."""
    n = len(records)
    lat = [r.latency for r in records if r.latency is not None]
    ttft = [r.first_token - r.submit for r in records
            if r.first_token is not None and r.outcome == "ok"]
    outcomes: dict[str, int] = {}
    for r in records:
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
    return {
        "requests": n,
        "outcomes": outcomes,
        "offloaded": sum(1 for r in records if r.executor not in (None, r.origin)),
        "slo_attainment": {f"{t:g}": (sum(1 for x in lat if x <= t) / n if n else 0.0)
                           for t in thresholds},
        "latency_mean_s": sum(lat) / len(lat) if lat else None,
        "latency_p50_s": percentile(lat, 0.5), "latency_p90_s": percentile(lat, 0.9),
        "latency_p99_s": percentile(lat, 0.99),
        "ttft_mean_s": sum(ttft) / len(ttft) if ttft else None,
        "ttft_p50_s": percentile(ttft, 0.5),
    }


def results_json(scenario: Scenario, seed: int, runs: dict[str, list[Record]],
                 timelines: dict[str, Timelines] | None = None) -> str:
    """The whole run as canonical JSON (byte-identical for the same scenario and seed)."""
    def rnd(x: float | None) -> float | None:
        return None if x is None else round(x, 6)

    doc = {
        "scenario": dataclasses.asdict(scenario), "seed": seed,
        "strategies": {
            name: {"summary": summarize(recs, scenario.slo_thresholds),
                   "requests": [{"id": r.request_id, "origin": r.origin,
                                 "executor": r.executor, "submit": rnd(r.submit),
                                 "first_token": rnd(r.first_token), "finish": rnd(r.finish),
                                 "outcome": r.outcome} for r in recs],
                   "timelines": (timelines or {}).get(name, {})}
            for name, recs in runs.items()},
    }
    return json.dumps(doc, indent=1, sort_keys=True, default=str)


def summary_markdown(scenario: Scenario, runs: dict[str, list[Record]]) -> str:
    """A markdown table: SLO attainment per threshold, mean and p90 latency, TTFT."""
    th = scenario.slo_thresholds
    head = ("| strategy | " + " | ".join(f"SLO {t:g} s" for t in th)
            + " | mean latency (s) | p90 (s) | TTFT p50 (s) | offloaded | failed |")
    lines = [f"# {scenario.name}", "", scenario.description, "", head,
             "|" + "---|" * (len(th) + 6)]
    for name, recs in runs.items():
        s = summarize(recs, th)
        failed = s["requests"] - s["outcomes"].get("ok", 0)

        def f(x: float | None) -> str:
            return "-" if x is None else f"{x:.1f}"

        lines.append(f"| {name} | " + " | ".join(f"{v:.1%}" for v in s["slo_attainment"].values())
                     + f" | {f(s['latency_mean_s'])} | {f(s['latency_p90_s'])} | "
                     f"{f(s['ttft_p50_s'])} | {s['offloaded']} | {failed} |")
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (imported on first use: slow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def per_node(scenario: Scenario, records: Sequence[Record]) -> list[dict[str, Any]]:
    """Per provider: its settings, its users' requests and latency, the work it executed."""
    rows = []
    for spec in scenario.nodes:
        mine = [r for r in records if r.origin == spec.name]
        lat = [r.latency for r in mine if r.latency is not None]
        rows.append({
            "node": spec.name, "profile": spec.profile, "stake": spec.stake,
            "accept_frequency": spec.accept_frequency,
            "offload_frequency": spec.offload_frequency,
            "requests": len(mine),
            "executed_own": sum(1 for r in records if r.executor == spec.name
                                and r.origin == spec.name),
            "executed_for_others": sum(1 for r in records if r.executor == spec.name
                                       and r.origin != spec.name),
            "latency_mean_s": sum(lat) / len(lat) if lat else None})
    return rows


def per_node_markdown(scenario: Scenario, records: Sequence[Record]) -> str:
    """The :func:`per_node` rows as a markdown table."""
    lines = ["| node | profile | stake | accept | requests | ran own | ran for others "
             "| mean latency (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in per_node(scenario, records):
        lat = "-" if r["latency_mean_s"] is None else f"{r['latency_mean_s']:.1f}"
        stake = "policy" if r["stake"] is None else f"{r['stake']:g}"
        lines.append(f"| {r['node']} | {r['profile']} | {stake} | {r['accept_frequency']:g} "
                     f"| {r['requests']} | {r['executed_own']} | {r['executed_for_others']} "
                     f"| {lat} |")
    return "\n".join(lines) + "\n"


def write_sweep_plot(scenario: Scenario, sweep: Sweep, results: dict[float, list[Record]],
                     out: Path) -> Path:
    """SLO attainment at each threshold against the swept value."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    values = sorted(results)
    for t in scenario.slo_thresholds:
        ys = [summarize(results[v], [t])["slo_attainment"][f"{t:g}"] for v in values]
        ax.plot(values, ys, marker="o", label=f"SLO {t:g} s")
    ax.set_xlabel(sweep.param)
    ax.set_ylabel("SLO attainment (decentralized)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{scenario.name}: SLO attainment vs {sweep.param}")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, out / f"slo_vs_{sweep.param}.png")


def write_per_node_plot(scenario: Scenario, records: Sequence[Record], out: Path) -> Path:
    """Requests each provider ran for others, labelled with its stake and accept frequency."""
    plt = _pyplot()
    rows = per_node(scenario, records)
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [f"{r['node']}\nstake {'policy' if r['stake'] is None else format(r['stake'], 'g')}"
              f"\naccept {r['accept_frequency']:g}" for r in rows]
    ax.bar(labels, [r["executed_for_others"] for r in rows])
    ax.set_ylabel("requests run for other providers")
    ax.set_title(f"{scenario.name}: work taken from the market")
    return _save(fig, out / "per_node.png")


def write_timeline_plot(scenario: Scenario, timelines: Timelines, out: Path,
                        title: str) -> Path:
    """Running requests and stake per node over time (one run)."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for name, rows in timelines.items():
        ts = [r[0] for r in rows]
        top.plot(ts, [r[2] for r in rows], label=name)
        bottom.plot(ts, [r[4] for r in rows], label=name)
    top.set_ylabel("running requests")
    bottom.set_ylabel("stake (credits)")
    bottom.set_xlabel("time (s)")
    top.set_title(f"{scenario.name}: {title}")
    top.legend(fontsize="small")
    top.grid(alpha=0.3)
    bottom.grid(alpha=0.3)
    return _save(fig, out / "timeline.png")


def credit_by_group(scenario: Scenario, timelines: Timelines) -> dict[str, list[list[float]]]:
    """Mean credit (balance + stake) of each provider class over time: ``[[t, credit]]``."""
    groups: dict[str, list[list[list[float]]]] = {}
    for spec in scenario.nodes:
        rows = timelines.get(spec.name)
        if rows:
            groups.setdefault(spec.label, []).append(rows)
    out = {}
    for label, members in groups.items():
        n = min(len(rows) for rows in members)
        out[label] = [[members[0][i][0], sum(r[i][4] + r[i][5] for r in members) / len(members)]
                      for i in range(n)]
    return out


def credit_markdown(scenario: Scenario, timelines: Timelines) -> str:
    """A table of each class's mean credit at the start and the end of the run."""
    rows = ["| class | providers | credit at start | credit at end | change |",
            "|---|---|---|---|---|"]
    counts: dict[str, int] = {}
    for spec in scenario.nodes:
        counts[spec.label] = counts.get(spec.label, 0) + 1
    for label, curve in sorted(credit_by_group(scenario, timelines).items(),
                               key=lambda kv: -kv[1][-1][1]):
        a, b = curve[0][1], curve[-1][1]
        rows.append(f"| {label} | {counts[label]} | {a:.1f} | {b:.1f} | {b - a:+.1f} |")
    return "\n".join(rows) + "\n"


def write_credit_plot(scenario: Scenario, timelines: Timelines, out: Path) -> Path:
    """Mean credit (balance + stake) per provider class over time."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, curve in credit_by_group(scenario, timelines).items():
        ax.plot([p[0] for p in curve], [p[1] for p in curve], label=label)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("credit: balance + stake (mean per provider)")
    ax.set_title(f"{scenario.name}: credit over time per class")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, out / "credit.png")


def write_plots(scenario: Scenario, runs: dict[str, list[Record]], out: Path) -> list[Path]:
    """PNG figures of a run: SLO attainment curves, latency CDFs, latency over time."""
    plt = _pyplot()
    written = []
    lo, hi = min(scenario.slo_thresholds), max(scenario.slo_thresholds)
    grid = [lo + (hi - lo) * i / 50 for i in range(51)]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, recs in runs.items():
        curve = summarize(recs, grid)["slo_attainment"]
        ax.plot(grid, list(curve.values()), label=name)
    ax.set_xlabel("SLO: end-to-end latency threshold (s)")
    ax.set_ylabel("SLO attainment (share of all requests)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{scenario.name}: SLO attainment")
    ax.legend()
    ax.grid(alpha=0.3)
    written.append(_save(fig, out / "slo_attainment.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, recs in runs.items():
        lat = sorted(x for x in (r.latency for r in recs) if x is not None)
        if lat:
            ax.plot(lat, [(i + 1) / len(recs) for i in range(len(lat))], label=name)
    ax.set_xlabel("end-to-end latency (s)")
    ax.set_ylabel("share of requests")
    ax.set_title(f"{scenario.name}: latency CDF")
    ax.legend()
    ax.grid(alpha=0.3)
    written.append(_save(fig, out / "latency_cdf.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, recs in runs.items():
        pts = [(r.submit, r.latency) for r in recs if r.latency is not None]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=6, label=name, alpha=0.6)
    if scenario.switch_at is not None:
        ax.axvline(scenario.switch_at, color="grey", linestyle="--", label="rates swap")
    for spec in scenario.nodes:
        if spec.join_at > 0:
            ax.axvline(spec.join_at, color="green", linestyle=":", label=f"{spec.name} joins")
        if spec.leave_at is not None:
            ax.axvline(spec.leave_at, color="red", linestyle=":", label=f"{spec.name} leaves")
    ax.set_xlabel("submitted at (s)")
    ax.set_ylabel("end-to-end latency (s)")
    ax.set_title(f"{scenario.name}: latency over time")
    ax.legend(markerscale=3)
    ax.grid(alpha=0.3)
    written.append(_save(fig, out / "latency_over_time.png"))
    return written
