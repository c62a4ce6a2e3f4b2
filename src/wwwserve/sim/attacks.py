"""Attacker strategies for deterministic simulation testing, and the invariants they test.

In an adversarial run (``wwwserve.sim.dst.run_seed()`` with ``adversarial=True``) the
network's last node is compromised: it runs the honest node code (so it is funded, staked
and proposes blocks) and, beside it, a few of these strategies, chosen by the seed. Each is
what a red team did to real nodes:

- ``forged_settlement``: duel settlements for duels that never happened: an honest victim
  as the executor that "did not answer", or as a "silent" judge of judges the attacker
  picked itself;
- ``equivocation``: a second block for every slot the attacker wins;
- ``side_blocks``: blocks signed by keys without stake, and the attacker's own blocks for
  old slots (side blocks);
- ``pool_flood``: transactions from keys without credit, nonces far ahead, spending beyond
  the balance;
- ``free_rider``: strangers without credit offering requests (and judge requests);
- ``lying_heartbeat``: heartbeats claiming absurd stake, credit and models;
- ``stalled_sync``: answering sync requests with one stale block every 8 s.

The invariants (``check_honest_stakes()``, ``check_bounds()``) hold if every defence
works: an honest account loses stake only in a judged duel (as loser, outvoted judge, or a
judge that committed and never revealed), never by a forfeit it cannot disprove; no honest
account is slashed; what strangers can fill (pool, side blocks, the block file) stays
bounded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from ..duel.service import JUDGE_PROTOCOL, JudgeRequest, unseal_record
from ..engines import CompletionRequest
from ..errors import InvalidTransactionError, OverlayError, ProtocolError, WWWServeError
from ..evidence import DuelEvidence, VoteCommit
from ..identity import Identity
from ..ledger import Chain, DuelSettlement, Payment, decode_tx, make_block, sign_tx
from ..ledger.service import SYNC_PROTOCOL, LedgerAccount, block_topic, tx_topic
from ..ledger.slashing import check_evidence
from ..market.messages import OFFLOAD_PROTOCOL, Offload
from ..membership import Heartbeat, peers_topic
from ..node import Node
from ..overlay import Overlay
from ..testing import signed_duel
from ..wire import Signed, decode, encode, seal, unseal

if TYPE_CHECKING:
    from ..testing import MemoryTestnet

__all__ = ["STRATEGIES", "Target", "check_bounds", "check_honest_stakes", "play", "run_attacks"]

STRATEGIES = ("forged_settlement", "equivocation", "side_blocks", "pool_flood",
              "free_rider", "lying_heartbeat", "stalled_sync")


def _fresh(rng: random.Random) -> Identity:
    return Identity.from_seed(rng.randbytes(32))


async def _ticks(rng: random.Random, lo: float, hi: float,
                 duration: float) -> AsyncIterator[None]:
    """Yield every ``lo``-``hi`` seconds (drawn) for ``duration`` seconds."""
    end = trio.current_time() + duration
    while trio.current_time() < end:
        await trio.sleep(rng.uniform(lo, hi))
        yield


@dataclasses.dataclass(frozen=True)
class Target:
    """An honest node the attacker aims at: its peer id and an address to dial."""

    peer_id: str
    address: str


async def run_attacks(net: MemoryTestnet, attacker: int, strategies: list[str],
                      rng: random.Random, duration: float) -> None:
    """Run ``strategies`` from node ``attacker`` of ``net`` for ``duration`` virtual seconds."""
    targets = [Target(n.peer_id, n.addresses[0])
               for k, n in enumerate(net.nodes) if k != attacker]
    await play(net.nodes[attacker], strategies, targets=targets, rng=rng, duration=duration,
               stranger=net.network.node)


async def play(node: Node, strategies: Sequence[str], *, targets: Sequence[Target],
               rng: random.Random, duration: float,
               stranger: Callable[[Identity], Overlay]) -> None:
    """Run ``strategies`` from the running ``node`` against ``targets`` for ``duration`` s.

    ``stranger`` makes an overlay for a fresh identity (a newcomer without an account): a
    ``MemoryOverlay`` of the simulated network, or
    ``Libp2pOverlay`` against real processes.
    """
    plays: dict[str, Callable[[], Awaitable[None]]] = {
        "forged_settlement": lambda: _forge_settlements(node, targets, rng, duration),
        "equivocation": lambda: _equivocate(node, duration),
        "side_blocks": lambda: _side_blocks(node, rng, duration),
        "pool_flood": lambda: _pool_flood(node, rng, duration),
        "free_rider": lambda: _free_ride(stranger, targets, rng, duration),
        "lying_heartbeat": lambda: _lie(node, rng, duration),
        "stalled_sync": lambda: _stall_sync(node, duration),
    }
    unknown = set(strategies) - set(plays)
    if unknown:
        raise ValueError(f"unknown attack strategies {sorted(unknown)}; known: {STRATEGIES}")
    async with trio.open_nursery() as nursery:
        for name in strategies:
            nursery.start_soon(plays[name])


async def _forge_settlements(node: Node, targets: Sequence[Target], rng: random.Random,
                             duration: float) -> None:
    credit = node.credit
    assert isinstance(credit, LedgerAccount)
    network = credit.service.network
    i = 0
    async for _ in _ticks(rng, 2.0, 6.0, duration):
        victim = rng.choice(targets).peer_id  # (named only: we cannot sign with its key)
        i += 1
        if i % 2:  # the victim "did not answer"; a fresh key of ours wins
            forged = signed_duel(node.identity, (_fresh(rng), victim), [], [],
                                 network=network, duel_id=f"forged{i}",
                                 answers=("mine", None))
        else:  # the victim as a "silent" judge beside a judge of ours
            forged = signed_duel(node.identity, (_fresh(rng), _fresh(rng)),
                                 [victim, _fresh(rng)], ["-", "A"],
                                 network=network, duel_id=f"forged{i}", anchor=0)
        credit.submit(functools.partial(_with_nonce, forged))


def _with_nonce(tx: DuelSettlement, nonce: int) -> DuelSettlement:
    return dataclasses.replace(tx, nonce=nonce)


async def _equivocate(node: Node, duration: float) -> None:
    """For every block this node proposes (honestly, by its ledger service), sign and
    gossip a second one for the same slot and parent, with other contents."""
    ledger = node.ledger
    assert ledger is not None
    chain = ledger.chain
    twinned: set[int] = set()
    with trio.move_on_after(duration):
        while True:
            await ledger.wait_changed()
            tip = chain.block(chain.tip)
            if tip is None or tip.proposer != node.peer_id or tip.slot in twinned:
                continue
            twinned.add(tip.slot)
            twin = make_block(node.identity, network=chain.network, height=tip.height,
                              parent=tip.parent, slot=tip.slot, txs=[],
                              state_root=b"\x00" * 32)
            await node.overlay.publish(block_topic(chain.network), encode(twin))


async def _side_blocks(node: Node, rng: random.Random, duration: float) -> None:
    ledger = node.ledger
    assert ledger is not None
    chain, topic = ledger.chain, block_topic(ledger.network)
    async for _ in _ticks(rng, 0.5, 2.0, duration):
        height = rng.randint(1, max(1, chain.height))
        parent = chain.canonical_id(height - 1)
        assert parent is not None
        signer = node.identity if rng.random() < 0.5 else _fresh(rng)
        block = make_block(signer, network=chain.network, height=height, parent=parent,
                           slot=rng.randint(0, max(0, chain.tip_slot)), txs=[],
                           state_root=rng.randbytes(32))
        block = dataclasses.replace(block, evidence=(rng.randbytes(2048),)) \
            if rng.random() < 0.3 else block
        await _publish(node, topic, encode(block))


async def _pool_flood(node: Node, rng: random.Random, duration: float) -> None:
    ledger = node.ledger
    assert ledger is not None
    network, topic = ledger.network, tx_topic(ledger.network)
    async for _ in _ticks(rng, 0.2, 1.0, duration):
        for _ in range(20):
            free = _fresh(rng)
            payer, nonce = ((free, 0) if rng.random() < 0.5 else
                            (node.identity, ledger.chain.state.nonce(node.peer_id)
                             + rng.randint(64, 1024)))
            tx = Payment(network=network, payer=payer.peer_id, payee=node.peer_id
                         if payer is not node.identity else free.peer_id,
                         amount=rng.randint(1, 10**12), request_id=rng.randbytes(6).hex(),
                         nonce=nonce)
            await _publish(node, topic, sign_tx(tx, payer).envelope)


async def _free_ride(stranger: Callable[[Identity], Overlay], targets: Sequence[Target],
                     rng: random.Random, duration: float) -> None:
    async with stranger(_fresh(rng)) as overlay:
        target = rng.choice(targets)
        try:
            await overlay.connect(target.address)
        except OverlayError:
            return
        async for _ in _ticks(rng, 0.5, 2.0, duration):
            request = CompletionRequest(request_id=rng.randbytes(6).hex(), prompt="free?",
                                        max_tokens=2000, timeout=30.0)
            payload = encode(Offload(request=encode(request), offer=True))
            judge = encode(JudgeRequest(record=b"\x00", question="q", answer_a="a",
                                        answer_b="b"))
            for protocol, data in ((OFFLOAD_PROTOCOL, payload), (JUDGE_PROTOCOL, judge)):
                try:
                    with trio.move_on_after(5.0):
                        async with overlay.request(target.peer_id, protocol, data,
                                                   idle_timeout=5.0) as resp:
                            async for _ in resp:
                                pass
                except (OverlayError, ProtocolError):
                    pass


async def _lie(node: Node, rng: random.Random, duration: float) -> None:
    topic = peers_topic(node.config.network.network_id)
    seq = 0
    async for _ in _ticks(rng, 0.5, 2.0, duration):
        liar = _fresh(rng)
        seq += 1
        hb = Heartbeat(network_id=node.config.network.network_id, peer_id=liar.peer_id,
                       incarnation=1, seq=seq, timestamp=trio.current_time(),
                       addresses=(), stake=1e300, credit=-1e300)
        await _publish(node, topic, encode(seal(hb, liar)))


async def _stall_sync(node: Node, duration: float) -> None:
    ledger = node.ledger
    assert ledger is not None

    async def trickle(peer: str, payload: bytes, sender: Any) -> None:
        while True:
            await trio.sleep(8.0)
            old = ledger.chain.canonical_blocks(1, 1)
            if old:
                await sender.send(encode(old[0]))

    node.overlay.serve(SYNC_PROTOCOL, trickle)
    await trio.sleep(duration)


async def _publish(node: Node, topic: str, data: bytes) -> None:
    with contextlib.suppress(OverlayError, WWWServeError):
        await node.overlay.publish(topic, data)


# ---- invariants ---------------------------------------------------------------------------
def _holdings(state: Any, account: str) -> int:
    return int(state.stake(account) + state.unbonding_total(account))


def check_honest_stakes(chain: Chain, honest: set[str], violations: list[str]) -> set[str]:
    """Replay ``chain``'s best branch and check every loss of an honest account's stake;
    returns the accounts slashed by block evidence.

    Independent of the settlement rules' own bookkeeping: a settlement may take an honest
    stake only if its duel was judged (judges and at least one reveal in the evidence) and
    the account was the loser, outvoted, or a judge whose own commit is in the evidence;
    block evidence may never slash an honest account.
    """
    slashed: set[str] = set()
    state = chain.genesis.state()
    for block in chain.canonical_blocks(1, chain.height):
        state.begin_block(block.height)
        for envelope in block.txs:
            stx = decode_tx(envelope)
            before = {a: _holdings(state, a) for a in honest}
            try:
                state.apply(stx, block.height)
            except InvalidTransactionError:
                violations.append(f"a transaction of block {block.height} does not replay")
                continue
            tx = stx.tx
            if not isinstance(tx, DuelSettlement):
                continue
            for account in honest:
                if _holdings(state, account) >= before[account]:
                    continue
                problem = _unearned_loss(tx, account)
                if problem:
                    violations.append(f"honest {account[-8:]} lost stake in duel "
                                      f"{tx.duel_id!r} of {tx.requester[-8:]}: {problem}")
        for raw in block.evidence:
            try:
                offence = check_evidence(raw, chain.network)
                state.slash(offence.offender, offence.key, block.height)
            except WWWServeError:
                continue
            slashed.add(offence.offender)
            if offence.offender in honest:
                violations.append(f"honest {offence.offender[-8:]} slashed at height "
                                  f"{block.height}")
    return slashed


def _unearned_loss(tx: DuelSettlement, account: str) -> str | None:
    ev = decode(tx.evidence, expect=DuelEvidence)
    if not unseal_record(tx.evidence).judges or not ev.reveals:
        return "the duel was not judged (a missing answer proves nothing)"
    committed = {unseal(decode(c, expect=Signed), expect=VoteCommit).judge
                 for c in ev.commits}
    if account in tx.silent and account not in committed:
        return "silent without a commit of its own"
    if account not in (tx.loser, *tx.minority, *tx.silent):
        return "neither loser nor outvoted nor silent"
    return None


def check_bounds(nodes: list[Node], violations: list[str]) -> None:
    """What strangers can fill stays within its bounds on every node."""
    for k, node in enumerate(nodes):
        ledger = node.ledger
        if ledger is None:
            continue
        chain = ledger.chain
        side = sum(chain._entries[b].size for b in chain._side if b in chain._entries)
        if side > chain.max_side_bytes or len(chain._side) > chain.max_side_blocks:
            violations.append(f"node{k}: {len(chain._side)} side blocks, {side} bytes")
        if len(chain.pool) > chain.pool_size or any(
                len(p) > chain.pool_per_account for p in chain._pending.values()):
            violations.append(f"node{k}: the pool is over its bounds")
        if ledger.store is not None:
            canonical = sum(len(encode(b)) + 8
                            for b in chain.canonical_blocks(1, chain.height))
            if ledger.store.size() > 2 * canonical + (1 << 20):
                violations.append(f"node{k}: block file of {ledger.store.size()} bytes for "
                                  f"{canonical} bytes of best chain")
        peers = node.membership.table.peers
        if any(info.stake > 1e15 or info.credit < 0 for info in peers.values()):
            violations.append(f"node{k}: a peer table holds out-of-range heartbeat values")


def attack_counts(strategies: list[str]) -> Counter[str]:
    """The strategies as fault counts (``attack_<name>``)."""
    return Counter(f"attack_{s}" for s in strategies)
