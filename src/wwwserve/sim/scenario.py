"""Scenarios: the YAML model of an experiment (nodes, workload, SLOs, sweeps)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import (
    ServerParams,
    build_section,
)
from ..engines.sim import ADMISSIONS
from ..errors import ConfigError
from ..market import get_policy

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
    #: how often a node reads its engine's load, as it scrapes a real engine's /metrics
    #: (the decentralized world decides on readings this stale; 0: the load as it is)
    scrape_interval: float = 0.5

    def __post_init__(self) -> None:
        if not (self.scrape_interval >= 0 and math.isfinite(self.scrape_interval)):
            raise ConfigError(f"scrape_interval: must be a number >= 0, got "
                              f"{self.scrape_interval!r}")
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
