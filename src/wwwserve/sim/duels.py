"""Duel studies in virtual time: networks of simulated providers of different quality.

``start()`` builds a network of real ``Node`` s over a
``MemoryNetwork`` with simulated engines and a private ledger;
``Network`` drives user load from user-only nodes and reads the duels settled on the
chain: per-class win rates (measured as calibrated: per pair of classes, over duels between
different classes, ties half, averaged over the opponent classes) and credit.
``class_study()`` is the whole quality study, shared by the tests and ``bench/duels.py``.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ..clock import SIM_EPOCH
from ..config import (
    DEFAULT_DISPATCH,
    DispatchParams,
    DuelParams,
    MembershipParams,
    ServerParams,
)
from ..duel.service import unseal_record
from ..engines import ChatMessage, CompletionRequest, Engine, SimEngine, get_profile
from ..errors import WWWServeError
from ..evidence import DuelRecord
from ..identity import Identity
from ..ledger import UNIT, Allocation, DuelSettlement, Genesis, decode_tx
from ..market import Policy, get_policy
from ..node import Node
from ..overlay import MemoryNetwork
from ..testing.assemble import sim_config, sim_node

__all__ = ["MODEL", "Network", "PairResults", "Spec", "StudyResult", "class_study",
           "rates_from_pairs", "start"]

MODEL = "Qwen/Qwen3-8B"
#: (class, other class) -> (wins of the class with ties half, games)
PairResults = dict[tuple[str, str], tuple[float, int]]


def rates_from_pairs(pairs: PairResults, classes: list[str]) -> dict[str, float]:
    """Each class's win rate: its rate against each other class, averaged."""
    def rate(c: str, d: str) -> float:
        wins, games = pairs.get((c, d), (0.0, 0))
        return wins / games if games else 0.5

    return {c: sum(rate(c, d) for d in classes if d != c) / (len(classes) - 1)
            for c in classes}
PARAMS = MembershipParams(heartbeat_interval=1.0, suspect_timeout=2.5, peer_timeout=5.0)


@dataclass
class Spec:
    """One node of a duel study: its class, GPU profile (None: a user-only node), accept
    frequency, an optional wrapper of its simulated engine (a cheat), its genesis credit,
    an optional wrapper of its policy."""

    cls: str
    profile: str | None = None  # None: a user-only node (no engine)
    accept: float = 1.0
    engine: Callable[[SimEngine], Any] | None = None  # wraps the simulated engine
    credit: float = 1000.0
    policy: Callable[[Policy], Policy] | None = None  # wraps the node's policy


class Network:
    """A running duel-study network (see the module docs)."""

    def __init__(self, nodes: list[Node], cls: dict[str, str]) -> None:
        self.nodes = nodes
        self.cls = cls
        self.done: Counter[str] = Counter()

    def of(self, c: str) -> list[Node]:
        """The nodes of class ``c``."""
        return [n for n in self.nodes if self.cls[n.peer_id] == c]

    async def drive(self, seconds: float, rate: float, seed: int, max_tokens: int = 48) -> None:
        """Users send ``rate`` requests/s (Poisson) for ``seconds``, then wait for them."""
        users = self.of("user")
        rng = random.Random(seed)

        async def one(node: Node, i: int) -> None:
            try:
                await node.complete(CompletionRequest(
                    request_id=f"{seed:04x}{i:012x}", model=MODEL, max_tokens=max_tokens,
                    messages=(ChatMessage("user", "solve " * 40),), timeout=200))
                self.done["ok"] += 1
            except WWWServeError as exc:  # counted: callers check there are none
                self.done[type(exc).__name__] += 1

        end = trio.current_time() + seconds
        async with trio.open_nursery() as load:
            i = 0
            while trio.current_time() < end:
                await trio.sleep(rng.expovariate(rate))
                load.start_soon(one, rng.choice(users), i)
                i += 1

    def settlements(self) -> list[tuple[DuelSettlement, DuelRecord]]:
        """Every duel settled on node 0's best chain, with its record."""
        ledger = self.nodes[0].ledger
        assert ledger is not None
        chain = ledger.chain
        out = []
        for block in chain.canonical_blocks(1, chain.height):
            for env in block.txs:
                tx = decode_tx(env).tx
                if isinstance(tx, DuelSettlement):
                    out.append((tx, unseal_record(tx.evidence)))
        return out

    def pair_results(self) -> PairResults:
        """Per ordered pair of different classes: (wins of the first, ties half; games)."""
        wins: defaultdict[tuple[str, str], float] = defaultdict(float)
        games: Counter[tuple[str, str]] = Counter()
        for tx, rec in self.settlements():
            x, y = rec.executors
            if self.cls[x] == self.cls[y]:
                continue
            for a, b in ((x, y), (y, x)):
                games[self.cls[a], self.cls[b]] += 1
                wins[self.cls[a], self.cls[b]] += (1.0 if tx.winner == a
                                                   else 0.5 if not tx.winner else 0.0)
        return {pair: (wins[pair], n) for pair, n in games.items()}

    def credit(self, node: Node) -> float:
        """``node``'s balance, stake and unbonding credit on node 0's chain (credits)."""
        ledger = self.nodes[0].ledger
        assert ledger is not None
        s = ledger.chain.state
        p = node.peer_id
        return (s.balance(p) + s.stake(p) + s.unbonding_total(p)) / UNIT


async def start(nursery: trio.Nursery, net: MemoryNetwork, specs: list[Spec], data_dir: Path,
                seed: int, *, duel: DuelParams, dispatch: DispatchParams = DEFAULT_DISPATCH,
                **rules: int) -> Network:
    """Start one node per spec in ``nursery`` (genesis rules from ``rules``, e.g.
    ``duel_loser_ppm``) and let the network form (10 virtual seconds)."""
    ids = [Identity.from_seed(random.Random(f"{seed}:{k}").randbytes(32))
           for k in range(len(specs))]
    genesis = Genesis(network="sim", time=SIM_EPOCH, slot_length=2.0, allocations=tuple(
        Allocation(i.peer_id, round(s.credit * UNIT), 10 * UNIT)
        for i, s in zip(ids, specs, strict=True)), **rules)
    nodes: list[Node] = []
    for k, (ident, spec) in enumerate(zip(ids, specs, strict=True)):
        boot = (nodes[0].addresses[0],) if nodes else ()
        engines: dict[str, Engine] = {}
        if spec.profile is not None:
            engine = SimEngine(get_profile(spec.profile), models=(MODEL,), seed=seed * 100 + k,
                               stream_interval=16)
            engines[MODEL] = spec.engine(engine) if spec.engine else engine
        cfg = sim_config(
            f"n{k}", MODEL if spec.profile is not None else None, membership=PARAMS,
            bootstrap=boot, duel=duel, dispatch=dispatch, data_dir=data_dir / f"n{k}",
            server_params=ServerParams(offload_frequency=1.0, accept_frequency=spec.accept))
        policy = get_policy(cfg.server_params)
        node = sim_node(cfg, identity=ident, network=net, genesis=genesis,
                        policy=spec.policy(policy) if spec.policy is not None else policy,
                        engines=engines, rng=random.Random(seed * 1000 + k))
        await nursery.start(node.run)
        nodes.append(node)
    await trio.sleep(10)
    return Network(nodes, {n.peer_id: s.cls for n, s in zip(nodes, specs, strict=True)})


@dataclass
class StudyResult:
    """What ``class_study()`` measured."""

    #: each class's win rate (see the module docs), the cross-class duels behind them and
    #: the per-pair results (to pool several runs with ``rates_from_pairs()``)
    rates: dict[str, float]
    duels: int
    pairs: PairResults
    #: mean credit (balance + stake + unbonding) per provider of each class at the end
    credit: dict[str, float]
    #: mean Bradley-Terry rating per class, and whether every replica's ratings agree
    ratings: dict[str, float]
    ratings_agree: bool
    #: user requests by outcome (``ok`` or an error's name)
    done: Counter[str]


async def class_study(classes: dict[str, str], seed: int, data_dir: Path, *,
                      seconds: float = 400.0, rate: float = 3.0,
                      per_class: int = 3) -> StudyResult:
    """A quality study in virtual time (run it under ``trio.testing.MockClock``).

    ``per_class`` providers of each class (name -> profile) and 3 user-only nodes on a
    private ledger; users send ``rate`` requests/s for ``seconds``; every offloaded request
    is duelled. Penalties are gentle (1% of stake for a loser and a minority judge: with the
    authors' 100% a weak class soon has no stake, is no longer drawn and stops being
    measured, and 20% for an outvoted judge moves more credit at random than the duels'
    outcomes do) and serving is free, so only quality moves credit.
    """
    specs = [Spec(c, p) for c, p in classes.items() for _ in range(per_class)]
    specs += [Spec("user", credit=100_000) for _ in range(3)]
    async with MemoryNetwork(seed=seed, latency=0.005) as net, trio.open_nursery() as nursery:
        network = await start(nursery, net, specs, data_dir, seed,
                              duel=DuelParams(p_inspect=1.0), duel_loser_ppm=10_000,
                              duel_minority_ppm=10_000, dispatch=DispatchParams(reward=0.0))
        await network.drive(seconds, rate, seed)
        await trio.sleep(30)  # the last settlements land
        pairs = network.pair_results()
        rates = rates_from_pairs(pairs, list(classes))
        duels = sum(n for _, n in pairs.values()) // 2
        credit = {c: sum(network.credit(n) for n in network.of(c)) / per_class
                  for c in classes}
        tables = [n.ratings() for n in network.nodes]
        ratings = {c: sum(tables[0][n.peer_id].rating for n in network.of(c)
                          if n.peer_id in tables[0]) / per_class for c in classes}
        result = StudyResult(rates, duels, pairs, credit, ratings,
                             all(t == tables[0] for t in tables), network.done)
        nursery.cancel_scope.cancel()
    return result
