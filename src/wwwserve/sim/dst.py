"""Deterministic simulation testing: seeded networks of real nodes with faults, and invariants.

``run_seed()`` builds, from one seed, a network of 5-12 real nodes with ledgers over the
in-memory overlay (trio's virtual time), drives a random workload through them while it
injects random faults, heals everything, lets the ledger settle and checks the invariants:

- every user request ended with an answer or a ``WWWServeError`` by
  its deadline (none hung, none raised anything else);
- every replica's state holds exactly the genesis credit (credit is conserved);
- all replicas agree on the finalized chain, and finality moves again once the faults are
  healed (it may stall during a partition, never for good);
- every whole answer a requester received from a peer is paid exactly once on the settled
  chain (60 virtual seconds after the heal), to that peer; no payment exists for an answer
  its payer did not receive whole, or that the payee's engine never produced
  (``PaymentAudit`` gathers what was served and received, beside the market's code);
- no balance or stake is negative.

Adversarial runs (``adversarial=True``) add an attacker (``attacks``) and two
invariants: an honest account loses stake only in a judged duel it lost (or was outvoted
in, or committed to and never revealed), never to a forgery, and is never slashed; pools,
side blocks, block files and peer tables stay within their bounds.

Faults: crash and restart with the node's on-disk chain, partitions and heals, gossip loss,
duplication and reordering (jitter), slow and failing engines, skewed wall clocks. Everything
comes from the seed, so a failing seed reproduces exactly: ``run(seed)`` again. Run under
``trio.run(..., clock=MockClock(autojump_threshold=0))`` (see ``run()``).
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from trio.testing import MockClock

from .._compat import TaskStatus
from ..engines import CompletionRequest, Emit, EngineLoad, SimEngine, Usage
from ..errors import EngineError, WWWServeError
from ..ledger import Payment, decode_tx
from ..node import Node
from ..testing import MemoryTestnet
from .attacks import STRATEGIES, attack_counts, check_bounds, check_honest_stakes, run_attacks

__all__ = ["FAULT_KINDS", "FaultyEngine", "SeedResult", "run", "run_seed"]

FAULT_KINDS = ("crash_restart", "partition", "loss", "duplicate", "jitter", "slow_engine",
               "failing_engine", "clock_skew")
#: how long after its deadline a request may still be finishing before it counts as hung
GRACE = 2.0


class FaultyEngine:
    """A simulated engine that can be made slow (a delay before each answer) or failing."""

    def __init__(self, inner: SimEngine, rng: random.Random,
                 served: set[str] | None = None) -> None:
        self.inner = inner
        self.rng = rng
        #: request ids this engine answered whole (kept across the node's restarts)
        self.served = served if served is not None else set()
        self.fail_rate = 0.0
        self.delay = 0.0

    @property
    def models(self) -> tuple[str, ...]:
        """The inner engine's models."""
        return self.inner.models

    def load(self) -> EngineLoad:
        """The inner engine's load."""
        return self.inner.load()

    async def generate(self, request: CompletionRequest, emit: Emit) -> Usage:
        """Fail (``fail_rate``), or wait (up to ``delay``), then run on the inner engine."""
        if self.fail_rate and self.rng.random() < self.fail_rate:
            raise EngineError("injected engine failure")
        if self.delay:
            await trio.sleep(self.rng.uniform(0.0, self.delay))
        usage = await self.inner.generate(request, emit)
        self.served.add(request.request_id)
        return usage

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The inner engine's batching loop."""
        await self.inner.run(task_status=task_status)


@dataclass
class PaymentAudit:
    """What the payment invariant checks the chain against, gathered beside the market's
    own code: the request ids each node's engine answered whole, and the whole answers
    each requester received from a peer (collected before a node is stopped)."""

    #: node index -> market request ids its engine answered whole
    served: dict[int, set[str]] = field(default_factory=dict)
    #: requester node index -> (executor peer id, market request id) it received whole
    delivered: dict[int, set[tuple[str, str]]] = field(default_factory=dict)

    def collect(self, k: int, node: Node) -> None:
        """Remember what node ``k``'s requester received (before it stops)."""
        self.delivered.setdefault(k, set()).update(node.dispatcher.requester.delivered)


@dataclass
class SeedResult:
    """What one seed's run did and which invariants it broke (none, if all is well)."""

    seed: int
    nodes: int
    requests: int = 0
    served: int = 0
    failed: int = 0
    virtual_s: float = 0.0
    faults: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    digest: str = ""
    #: blocks between the highest tip and the lowest final height at the end
    final_lag: int = 0

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"seed": self.seed, "nodes": self.nodes, "requests": self.requests,
                "served": self.served, "failed": self.failed, "faults": dict(self.faults),
                "violations": self.violations, "final_lag": self.final_lag,
                "digest": self.digest}


async def run_seed(seed: int, data_dir: Path, *, max_nodes: int = 12,
                   duration: float = 90.0, settle: float = 60.0,
                   adversarial: bool = False) -> SeedResult:
    """Run one seeded network with faults for ``duration`` virtual seconds; check it.

    Needs trio's virtual clock. ``data_dir`` receives the nodes' chains. ``adversarial``:
    the last node also plays 2-4 attacker strategies (``attacks``) and the honest
    nodes' stakes and bounds are checked too.
    """
    rng = random.Random(seed)
    n = rng.randint(5, max(5, max_nodes))
    result = SeedResult(seed=seed, nodes=n)
    attacker = n - 1 if adversarial else None
    strategies = sorted(rng.sample(STRATEGIES, rng.randint(2, 4))) if adversarial else []
    result.faults.update(attack_counts(strategies))
    engines: dict[int, FaultyEngine] = {}
    audit = PaymentAudit()

    def wrap(k: int, engine: SimEngine) -> FaultyEngine:
        engines[k] = FaultyEngine(engine, random.Random(seed * 7919 + k),
                                  audit.served.setdefault(k, set()))
        return engines[k]

    skews = [rng.uniform(-3.0, 3.0) if rng.random() < 0.3 else 0.0 for _ in range(n)]
    result.faults["clock_skew"] = sum(1 for s in skews if s)
    net = MemoryTestnet(
        n, ledger=True, data_dir=data_dir, seed=seed, credit=100.0,
        accept_frequency=[rng.choice([0.5, 1.0]) for _ in range(n)],
        # 0.0: every request of that node goes to the market (offloads under faults)
        target_token_usage=[rng.choice([0.0, 0.05, 0.3, 0.6]) for _ in range(n)],
        profile=[rng.choice(["rtx4090/qwen3-8b", "h100/qwen3-8b"]) for _ in range(n)],
        p_inspect=rng.choice([0.0, 0.2]), latency=rng.uniform(0.001, 0.02),
        clock_skew=skews, engine_wrapper=wrap)
    outcomes: list[str] = []
    async with net:
        start = trio.current_time()
        down: set[int] = set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_users, net, rng, duration, down, outcomes, result)
            nursery.start_soon(_chaos, net, rng, duration, down, engines, result, attacker,
                               audit)
            if attacker is not None:
                nursery.start_soon(run_attacks, net, attacker, strategies,
                                   random.Random(f"attacker:{seed}"), duration)
        # heal everything, bring every node back, let the chain settle
        net.network.heal()
        net.network.loss = net.network.duplicate = net.network.jitter = 0.0
        for engine in engines.values():
            engine.fail_rate = engine.delay = 0.0
        for k in sorted(down):
            await net.start_node(k)
        healed = _lowest_final(net.nodes)
        await trio.sleep(settle)
        result.virtual_s = trio.current_time() - start
        _check_ledgers(net.nodes, result)
        for k, node in enumerate(net.nodes):
            audit.collect(k, node)
        _check_payments(net.nodes, audit, result, honest=[
            k for k in range(n) if k != attacker])
        if attacker is not None:
            honest = {node.peer_id for k, node in enumerate(net.nodes) if k != attacker}
            ledger = net.nodes[0].ledger
            assert ledger is not None
            check_honest_stakes(ledger.chain, honest, result.violations)
            check_bounds(net.nodes, result.violations)
        if settle >= 20.0 and _lowest_final(net.nodes) <= healed:
            result.violations.append(f"finality stalled: the lowest final height stayed at "
                                     f"{healed} for {settle:g} s after the heal")
        tips = [n.ledger.chain.tip.hex() if n.ledger else "" for n in net.nodes]
    result.requests = len(outcomes)
    result.served = outcomes.count("ok")
    result.failed = result.requests - result.served
    result.digest = hashlib.sha256(repr((outcomes, sorted(result.faults.items()),
                                         result.violations, tips)).encode()).hexdigest()[:16]
    return result


async def _users(net: MemoryTestnet, rng: random.Random, duration: float, down: set[int],
                 outcomes: list[str], result: SeedResult) -> None:
    """Poisson requests (about one every 1.5 s) to random running nodes."""
    async def one(i: int, k: int, budget: float, max_tokens: int) -> None:
        node = net.nodes[k]
        request = net.request(f"u{i}", prompt_tokens=rng.randint(50, 2000),
                              max_tokens=max_tokens, timeout=budget,
                              stream=rng.random() < 0.5)
        with trio.move_on_after(budget + GRACE) as scope:
            try:
                _, usage = await node.complete(request)
            except WWWServeError as exc:
                outcomes.append(f"error:{type(exc).__name__}")
                return
            except Exception as exc:  # an invariant: only documented errors come out
                result.violations.append(f"request u{i} on node{k} raised "
                                         f"{type(exc).__name__}: {exc}")
                outcomes.append("violation")
                return
            if usage.completion_tokens != max_tokens:
                result.violations.append(f"request u{i}: {usage.completion_tokens} of "
                                         f"{max_tokens} tokens")
            outcomes.append("ok")
        if scope.cancelled_caught:
            result.violations.append(f"request u{i} on node{k} hung past its {budget:.0f} s "
                                     "deadline")
            outcomes.append("hung")

    async with trio.open_nursery() as nursery:
        end = trio.current_time() + duration
        i = 0
        while True:
            await trio.sleep(rng.expovariate(1 / 1.5))
            if trio.current_time() >= end:
                break
            running = [k for k in range(net.n) if k not in down]
            nursery.start_soon(one, i, rng.choice(running), rng.uniform(5.0, 40.0),
                               rng.choice([16, 64, 200, 1000]))
            i += 1


async def _chaos(net: MemoryTestnet, rng: random.Random, duration: float, down: set[int],
                 engines: dict[int, FaultyEngine], result: SeedResult,
                 attacker: int | None = None, audit: PaymentAudit | None = None) -> None:
    """A random fault about every 8 s; each one is undone after a while (or at the end)."""
    async with trio.open_nursery() as nursery:
        end = trio.current_time() + duration
        while True:
            await trio.sleep(rng.expovariate(1 / 8.0))
            if trio.current_time() >= end:
                break
            kind = rng.choice(FAULT_KINDS[:-1])
            undo_after = rng.uniform(3.0, 25.0)
            if kind == "crash_restart":
                # node0 is everyone's bootstrap and stays up; keep at least three running
                choices = [k for k in range(1, net.n) if k not in down and k != attacker]
                if net.n - len(down) - 1 < 3:
                    continue
                if rng.random() < 0.5:
                    # a node running a peer's request (waiting up to 10 s for one), else the
                    # busiest: crashes that cut offloaded answers mid-stream
                    for _ in range(100):
                        if any(net.nodes[j].dispatcher.running_for_peers for j in choices):
                            break
                        await trio.sleep(0.1)
                    choices = [j for j in choices if j not in down]
                    if not choices or net.n - len(down) - 1 < 3:
                        continue
                    k = max(choices, key=lambda j: (net.nodes[j].dispatcher.running_for_peers,
                                                    net.engines[j].load().running, j))
                else:
                    k = rng.choice(choices)
                down.add(k)
                if audit is not None:
                    audit.collect(k, net.nodes[k])
                net.network.crash(net.nodes[k].peer_id)
                net.stop_node(k)
                nursery.start_soon(_restart, net, k, down, undo_after)
            elif kind == "partition":
                live = [net.nodes[k].peer_id for k in range(net.n) if k not in down]
                rng.shuffle(live)
                cut = rng.randint(1, len(live) - 1)
                net.network.partition(live[:cut], live[cut:])
                nursery.start_soon(_later, undo_after, net.network.heal)
            elif kind in ("loss", "duplicate", "jitter"):
                value = rng.uniform(0.01, 0.2) if kind != "jitter" else rng.uniform(0.005, 0.1)
                setattr(net.network, kind, value)
                nursery.start_soon(_later, undo_after, setattr, net.network, kind, 0.0)
            else:
                engine = engines[rng.randrange(net.n)]
                attr, value = (("delay", rng.uniform(0.5, 5.0)) if kind == "slow_engine"
                               else ("fail_rate", rng.uniform(0.2, 1.0)))
                setattr(engine, attr, value)
                nursery.start_soon(_later, undo_after, setattr, engine, attr, 0.0)
            result.faults[kind] += 1
        nursery.cancel_scope.cancel()  # undo what is left at once (the caller heals)


async def _later(delay: float, fn: Any, *args: Any) -> None:
    await trio.sleep(delay)
    fn(*args)


async def _restart(net: MemoryTestnet, k: int, down: set[int], after: float) -> None:
    await trio.sleep(after)
    with trio.CancelScope(shield=True):  # never half-started when the run ends
        if k in down:
            await net.start_node(k)
            down.discard(k)


def _lowest_final(nodes: list[Node]) -> int:
    return min((n.ledger.chain.finalized_height for n in nodes if n.ledger is not None),
               default=0)


def _check_ledgers(nodes: list[Node], result: SeedResult) -> None:
    chains = [n.ledger.chain for n in nodes if n.ledger is not None]
    if len(chains) != len(nodes):
        result.violations.append("a node has no ledger")
        return
    final = min(c.finalized_height for c in chains)
    result.final_lag = max(c.height for c in chains) - final
    if len({c.canonical_id(final) for c in chains}) != 1:
        result.violations.append(f"replicas disagree on the final block at height {final}")
    for k, chain in enumerate(chains):
        state = chain.state
        if state.total() != state.genesis_supply + state.issued - state.burned:
            result.violations.append(
                f"node{k}: total credit {state.total()} != genesis {state.genesis_supply} "
                f"+ issued {state.issued} - burned {state.burned}")
        negative = [a for a in state.accounts() if state.balance(a) < 0 or state.stake(a) < 0]
        if negative:
            result.violations.append(f"node{k}: negative balance or stake: {negative}")


def _check_payments(nodes: list[Node], audit: PaymentAudit, result: SeedResult, *,
                    honest: list[int]) -> None:
    """Every whole answer an honest requester received from a peer is paid exactly once on
    the settled chain, to that peer; no honest node paid for an answer it did not receive
    whole or that the payee's engine never produced."""
    ledger = nodes[0].ledger
    if ledger is None:
        return
    chain = ledger.chain
    index = {node.peer_id: k for k, node in enumerate(nodes)}
    payments: dict[tuple[str, str], list[str]] = {}
    for block in chain.canonical_blocks(1, chain.height):
        for env in block.txs:
            tx = decode_tx(env).tx
            if isinstance(tx, Payment):
                payments.setdefault((tx.payer, tx.request_id), []).append(tx.payee)
    unpaid, wrong, unserved = [], [], []
    for k in honest:
        me = nodes[k].peer_id
        delivered = audit.delivered.get(k, set())
        for executor, rid in sorted(delivered):
            payees = payments.get((me, rid), [])
            if payees != [executor]:
                unpaid.append(f"node{k}:{rid} from {executor[-6:]} paid to "
                              f"{[p[-6:] for p in payees]}")
        for (payer, rid), payees in payments.items():
            if payer != me:
                continue
            for payee in payees:
                if (payee, rid) not in delivered:
                    wrong.append(f"node{k}:{rid} to {payee[-6:]}")
                elif rid not in audit.served.get(index.get(payee, -1), set()):
                    unserved.append(f"node{k}:{rid} to {payee[-6:]}")
    if unpaid:
        result.violations.append(f"whole answers not paid exactly once, to their executor, "
                                 f"{len(unpaid)}: {unpaid[:3]}")
    if wrong:
        result.violations.append(f"payments for answers the payer never received whole, "
                                 f"{len(wrong)}: {wrong[:3]}")
    if unserved:
        result.violations.append(f"payments for requests the payee's engine never answered, "
                                 f"{len(unserved)}: {unserved[:3]}")


def run(seed: int, data_dir: Path, **kw: Any) -> SeedResult:
    """``run_seed()`` in its own trio run under a virtual clock."""
    return trio.run(lambda: run_seed(seed, data_dir, **kw),
                    clock=MockClock(autojump_threshold=0))
