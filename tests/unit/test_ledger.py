"""The ledger's sans-IO core: transactions, state rules, blocks, fork choice, finality, file."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import chain_driver
from wwwserve.duel.service import unseal_record
from wwwserve.errors import (
    ConfigError,
    InvalidBlockError,
    InvalidTransactionError,
    LedgerCorruptError,
)
from wwwserve.evidence import DuelRecord
from wwwserve.identity import Identity
from wwwserve.ledger import (
    UNIT,
    AddResult,
    Allocation,
    Block,
    BlockStore,
    Chain,
    DuelSettlement,
    Genesis,
    JoinGrant,
    Payment,
    Skip,
    Stake,
    Unstake,
    block_id,
    decode_tx,
    make_block,
    sign_tx,
)
from wwwserve.ledger.block import sign_block
from wwwserve.ledger.service import replay
from wwwserve.testing import signed_duel
from wwwserve.wire import encode

NET = "test"
IDS = [Identity.from_seed(bytes([i]) * 32) for i in range(6)]
PEERS = [i.peer_id for i in IDS]


def genesis(n: int = 4, *, balance: int = 100 * UNIT, stake: int = 10 * UNIT,
            **kw: object) -> Genesis:
    allocs = tuple(Allocation(p, balance, stake) for p in PEERS[:n])
    return Genesis(network=NET, time=0.0, allocations=allocs, **kw)  # type: ignore[arg-type]


class Nonces:
    """The next nonce per signer, for building valid sequences."""

    def __init__(self) -> None:
        self.next: dict[str, int] = {}

    def __call__(self, who: str) -> int:
        n = self.next.get(who, 0)
        self.next[who] = n + 1
        return n


def pay(i: int, j: int, amount: int, nonce: int, rid: str = "") -> object:
    return sign_tx(Payment(network=NET, payer=PEERS[i], payee=PEERS[j], amount=amount,
                           request_id=rid or f"r{i}-{nonce}", nonce=nonce), IDS[i])


# ---- transactions and state rules -------------------------------------------------------
def test_a_valid_payment_moves_exactly_its_amount():
    state = genesis().state()
    state.apply(pay(0, 1, 3 * UNIT, 0), height=1)
    assert state.balance(PEERS[0]) == 97 * UNIT
    assert state.balance(PEERS[1]) == 103 * UNIT
    assert state.nonce(PEERS[0]) == 1
    assert state.total() == state.genesis_supply


@pytest.mark.parametrize("case", ["bad signature", "overspend", "replay", "wrong nonce",
                                  "unknown account", "other network", "wrong signer",
                                  "paid twice", "to oneself", "invalid payee", "zero amount"])
def test_every_invalid_transaction_is_rejected_and_changes_nothing(case):
    state = genesis(2).state()
    state.apply(pay(0, 1, UNIT, 0, rid="first"), height=1)
    before = state.root()
    with pytest.raises(InvalidTransactionError):
        if case == "bad signature":
            env = bytearray(pay(0, 1, UNIT, 1).envelope)
            env[-5] ^= 1
            state.apply(decode_tx(bytes(env)), 1)
        elif case == "overspend":
            state.apply(pay(0, 1, 1000 * UNIT, 1), 1)
        elif case == "replay":
            state.apply(pay(0, 1, UNIT, 0, rid="first"), 1)
        elif case == "wrong nonce":
            state.apply(pay(0, 1, UNIT, 5), 1)
        elif case == "unknown account":  # an account with nothing cannot pay
            state.apply(pay(4, 1, UNIT, 0), 1)
        elif case == "other network":
            state.apply(sign_tx(Payment(network="other", payer=PEERS[0], payee=PEERS[1],
                                        amount=1, request_id="x", nonce=1), IDS[0]), 1)
        elif case == "wrong signer":
            tx = Payment(network=NET, payer=PEERS[0], payee=PEERS[1], amount=1,
                         request_id="x", nonce=1)
            from wwwserve.wire import seal
            decode_tx(encode(seal(tx, IDS[1])))
        elif case == "paid twice":
            state.apply(pay(0, 1, UNIT, 1, rid="first"), 1)
        elif case == "to oneself":
            state.apply(pay(0, 0, UNIT, 1), 1)
        elif case == "invalid payee":
            state.apply(sign_tx(Payment(network=NET, payer=PEERS[0], payee="nobody",
                                        amount=1, request_id="x", nonce=1), IDS[0]), 1)
        elif case == "zero amount":
            state.apply(pay(0, 1, 0, 1), 1)
    assert state.root() == before


def test_malformed_envelopes_are_invalid_transactions_not_crashes():
    for junk in (b"", b"\x00", b"\x81\xa1t\xa1x", encode(Stake(network=NET, account=PEERS[0],
                                                                amount=1, nonce=0))):
        with pytest.raises(InvalidTransactionError):
            decode_tx(junk)


def test_unstaked_credit_is_released_after_the_unbonding_delay_and_can_be_slashed():
    g = genesis(5, unbonding_blocks=3)
    state = g.state()
    state.apply(sign_tx(Unstake(network=NET, account=PEERS[1], amount=4 * UNIT, nonce=0),
                        IDS[1]), height=1)
    assert state.stake(PEERS[1]) == 6 * UNIT and state.unbonding_total(PEERS[1]) == 4 * UNIT
    # a duel lost while unbonding: the penalty reaches the unbonding credit too
    # judges 3 and 5 say x (PEERS[2]) is better, judge 4 says y: 4 is the minority
    duel = signed_duel(IDS[0], (IDS[2], IDS[1]), [IDS[3], IDS[4], IDS[5]],
                       ["A", "B", "A"], network=NET, rules=g.rules, duel_id="d1")
    assert (duel.winner, duel.loser, duel.minority) == (PEERS[2], PEERS[1], (PEERS[4],))
    state.apply(sign_tx(duel, IDS[0]), height=2)
    assert state.stake(PEERS[1]) == 0 and state.unbonding_total(PEERS[1]) == 0
    # the reward (1 credit, from the requester) and the loser's whole stake (4 + 6)
    assert state.balance(PEERS[2]) == 111 * UNIT
    assert state.balance(PEERS[0]) == 99 * UNIT
    assert state.stake(PEERS[4]) == 8 * UNIT  # 20% of 10 staked, shared by the majority
    assert state.balance(PEERS[3]) == 101 * UNIT and state.balance(PEERS[5]) == 1 * UNIT
    assert state.total() == state.genesis_supply
    with pytest.raises(InvalidTransactionError, match="already settled"):
        state.apply(sign_tx(dataclasses.replace(duel, nonce=1), IDS[0]), height=2)


def test_duel_parties_must_differ():
    state = genesis(4).state()
    # an executor judging its own duel
    duel = signed_duel(IDS[0], (IDS[1], IDS[2]), [IDS[1], IDS[3], IDS[4]],
                       ["A", "A", "A"], network=NET, duel_id="d")
    with pytest.raises(InvalidTransactionError, match="differ"):
        state.apply(sign_tx(duel, IDS[0]), 1)


def test_join_grant_is_issued_once_and_counted():
    state = genesis(2, join_grant=5 * UNIT).state()
    state.apply(sign_tx(JoinGrant(network=NET, account=PEERS[5], nonce=0), IDS[5]), 1)
    assert state.balance(PEERS[5]) == 5 * UNIT
    assert state.total() == state.genesis_supply + state.issued
    with pytest.raises(InvalidTransactionError):
        state.apply(sign_tx(JoinGrant(network=NET, account=PEERS[5], nonce=1), IDS[5]), 1)
    no_grant = genesis(2).state()
    with pytest.raises(InvalidTransactionError, match="no join grant"):
        no_grant.apply(sign_tx(JoinGrant(network=NET, account=PEERS[5], nonce=0), IDS[5]), 1)


ops = st.lists(st.tuples(st.sampled_from(["pay", "stake", "unstake"]),
                         st.integers(0, 4), st.integers(0, 4),
                         st.integers(-5 * UNIT, 150 * UNIT), st.booleans()),
               max_size=40)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_supply_is_conserved_and_rejections_change_nothing(seq):
    state = genesis(4, unbonding_blocks=2).state()
    nonces: dict[str, int] = {}
    for height, (kind, i, j, amount, bad_nonce) in enumerate(seq, start=1):
        who = PEERS[i]
        nonce = nonces.get(who, 0) + (7 if bad_nonce and height % 3 == 0 else 0)
        if kind == "pay":
            tx: object = Payment(network=NET, payer=who, payee=PEERS[j], amount=amount,
                                 request_id=f"r{height}", nonce=nonce)
        elif kind == "stake":
            tx = Stake(network=NET, account=who, amount=amount, nonce=nonce)
        else:
            tx = Unstake(network=NET, account=who, amount=amount, nonce=nonce)
        before = state.root()
        undo = state.begin_block(height)  # may release unbonding credit
        started = state.root()
        try:
            undo.extend(state.apply(sign_tx(tx, IDS[i]), height))  # type: ignore[arg-type]
            nonces[who] = nonces.get(who, 0) + 1
        except InvalidTransactionError:
            assert state.root() == started  # a rejected transaction changes nothing
        assert state.total() == state.genesis_supply + state.issued
        assert all(v >= 0 for v in (*state.balances.values(), *state.stakes.values()))
        if height % 5 == 0:  # apply then revert is the identity
            state.revert(undo)
            assert state.root() == before
            nonces = dict(state.nonces)


# ---- blocks and the chain ---------------------------------------------------------------
def run_slots(chain: Chain, slots: range, ids: list[Identity] = IDS) -> list[Block]:
    """Let whoever is each slot's proposer propose, and every one of ``ids`` vote."""
    return chain_driver.run_slots(chain, slots, ids)


def test_proposer_lottery_follows_stake():
    g = Genesis(network=NET, time=0.0, allocations=(
        Allocation(PEERS[0], 0, 30 * UNIT), Allocation(PEERS[1], 0, 10 * UNIT),
        Allocation(PEERS[2], 0, 0)))
    chain = Chain(g)
    counts = {p: 0 for p in PEERS[:3]}
    for slot in range(4000):
        who = chain.leader_of(slot)
        assert who is not None
        counts[who] += 1
    assert counts[PEERS[2]] == 0
    assert counts[PEERS[0]] / 4000 == pytest.approx(0.75, abs=0.03)


def test_blocks_carry_payments_and_every_replica_agrees():
    g = genesis()
    a, b = Chain(g), Chain(g)
    for k in range(5):
        a.add_tx(pay(k % 4, (k + 1) % 4, UNIT, k // 4), now=0.0)
    blocks = run_slots(a, range(1, 6))
    assert blocks and not a.pool
    for block in blocks:
        assert b.add_block(block) is AddResult.EXTENDED
    assert b.tip == a.tip and b.state.root() == a.state.root()
    assert a.state.total() == a.state.genesis_supply


def _next_block(chain: Chain, slot: int = 1) -> tuple[Block, Identity]:
    """The block the proposer of ``slot`` would make, not yet added."""
    who = chain.leader_of(slot)
    ident = next(i for i in IDS if i.peer_id == who)
    return _unsent(chain, ident, slot), ident


def _unsent(chain: Chain, ident: Identity, slot: int) -> Block:
    """The block ``ident`` would propose for ``slot``, without adding it."""
    txs = chain._select(chain.height + 1)
    undo = chain.state.apply_all(txs, chain.height + 1)
    root = chain.state.root()
    chain.state.revert(undo)
    return make_block(ident, network=NET, height=chain.height + 1, parent=chain.tip,
                      slot=slot, txs=txs, state_root=root)


@pytest.mark.parametrize("tamper", ["changed tx", "reordered txs", "wrong proposer",
                                    "bad state root", "bad signature", "wrong parent",
                                    "wrong height", "other network"])
def test_every_tampered_block_is_rejected(tamper):
    chain = Chain(genesis())
    chain.add_tx(pay(0, 1, UNIT, 0), 0.0)
    chain.add_tx(pay(1, 2, UNIT, 0), 0.0)
    block, ident = _next_block(chain)
    assert len(block.txs) == 2
    other = next(i for i in IDS[:4] if i.peer_id != ident.peer_id)

    def resign(b: Block, who: Identity = ident) -> Block:
        txs = [decode_tx(t) for t in b.txs]
        return make_block(who, network=b.network, height=b.height, parent=b.parent,
                          slot=b.slot, txs=txs, state_root=b.state_root)

    if tamper == "changed tx":
        bad = resign(dataclasses.replace(block, txs=(block.txs[0],
                                                     pay(1, 3, UNIT, 0).envelope)))
    elif tamper == "reordered txs":
        bad = dataclasses.replace(block, txs=block.txs[::-1])  # signature no longer fits
    elif tamper == "wrong proposer":
        bad = resign(block, other)
    elif tamper == "bad state root":
        bad = resign(dataclasses.replace(block, state_root=b"\x00" * 32))
    elif tamper == "bad signature":
        bad = dataclasses.replace(block, signature=b"\x00" * 64)
    elif tamper == "wrong parent":
        bad = resign(dataclasses.replace(block, parent=b"\x01" * 32))
    elif tamper == "wrong height":
        bad = resign(dataclasses.replace(block, height=5))
    else:
        bad = resign(dataclasses.replace(block, network="other"))
    if tamper == "wrong parent":
        assert chain.add_block(bad) is AddResult.ORPHAN  # never applied
    else:
        with pytest.raises(InvalidBlockError):
            chain.add_block(bad)
    assert chain.height == 0 and chain.state.root() == genesis().state().root()
    assert chain.add_block(block) is AddResult.EXTENDED  # the honest block still goes in


def test_a_longer_branch_wins_and_the_losing_branch_transactions_are_kept_once():
    g = genesis()
    a, b = Chain(g), Chain(g)
    # a partition: a and b each grow their own branch; only a has the payment
    a.add_tx(pay(0, 1, 2 * UNIT, 0), 0.0)
    a_blocks = run_slots(a, range(1, 4))
    b_blocks = run_slots(b, range(4, 20))
    assert len(b_blocks) > len(a_blocks) and a.state.nonce(PEERS[0]) == 1
    for block in b_blocks:
        a.add_block(block)
    assert a.tip == b.tip and a.stats["reorganizations"] == 1
    assert a.state.nonce(PEERS[0]) == 0  # undone with its branch ...
    assert len(a.pool) == 1  # ... and back in the pool
    more = run_slots(a, range(20, 30))
    for block in more:
        b.add_block(block)
    assert a.state.nonce(PEERS[0]) == b.state.nonce(PEERS[0]) == 1  # applied once
    assert b.state.balance(PEERS[1]) == 102 * UNIT
    assert a.state.root() == b.state.root()


def test_an_equivocating_proposer_is_followed_by_the_majority_and_slashed():
    g = genesis()
    a, b = Chain(g), Chain(g)
    block, ident = _next_block(a)
    twin = _with_payment(a, ident, block.slot)
    assert block_id(twin) != block_id(block)
    assert a.add_block(block) is AddResult.EXTENDED
    b.add_block(twin)
    # the others build on the twin; a, which saw the first block, keeps the twin as a side
    # block (it used to refuse it for good) and follows the longer branch
    assert a.add_block(twin) in (AddResult.SIDE, AddResult.REORGANIZED)
    assert a.equivocations == [(block, twin)]
    b.add_block(block)  # gossip relays the first one to the others too
    third = make_block(ident, network=NET, height=1, parent=g_id(a), slot=block.slot,
                       txs=[], state_root=b"\x03" * 32)
    with pytest.raises(InvalidBlockError, match="more than 2 blocks"):
        a.add_block(third)  # a third version proves nothing new: not kept
    more = run_slots(b, range(2, 12))
    for blk in more:
        a.add_block(blk)
    assert a.tip == b.tip and a.state.root() == b.state.root()
    # b's proposers put the evidence of the equivocation on chain: slashed, part burned
    stake = 10 * UNIT
    burned = stake * g.equivocation_ppm // 1_000_000
    for chain in (a, b):
        assert chain.state.stake(ident.peer_id) == 0
        assert chain.state.unbonding_total(ident.peer_id) == stake - burned
        assert chain.state.burned == burned
        assert chain.state.total() == chain.state.genesis_supply - burned
    assert sum(len(blk.evidence) for blk in more) == 1  # once, never again


def _with_payment(chain: Chain, ident: Identity, slot: int) -> Block:
    """A block of ``ident`` for ``slot`` on the tip that carries one payment."""
    payer = (IDS.index(ident) + 1) % 4
    return chain.build_block(ident, slot, [pay(payer, 0 if payer else 1, UNIT, 0)])


def test_a_block_with_evidence_already_used_or_forged_is_rejected():
    g = genesis()
    chain = Chain(g)
    block, ident = _next_block(chain)
    twin = _with_payment(chain, ident, block.slot)
    chain.add_block(block)
    chain.add_block(twin)
    (evidence,) = chain.evidence.values()
    nxt = chain.leader_of(2)
    prop = next(i for i in IDS if i.peer_id == nxt)
    good = chain.build_block(prop, 2, [], evidence=[evidence])
    forged = dataclasses.replace(good, evidence=(evidence[:-3] + b"xyz",))
    with pytest.raises(InvalidBlockError):
        chain.add_block(sign_block(forged, prop))
    assert chain.add_block(good) is AddResult.EXTENDED
    slot = 3
    leader3 = next(i for i in IDS if i.peer_id == chain.leader_of(slot))
    twice = make_block(leader3, network=NET, height=chain.height + 1, parent=chain.tip,
                       slot=slot, txs=[], state_root=chain.state.root(), evidence=[evidence])
    with pytest.raises(InvalidBlockError, match="already slashed"):
        chain.add_block(twice)


def test_blocks_of_keys_without_stake_are_neither_kept_nor_stored():
    stored: list[Block] = []
    chain = Chain(genesis(), on_block=stored.append)
    stranger = IDS[5]
    junk = make_block(stranger, network=NET, height=1, parent=g_id(chain), slot=1, txs=[],
                      state_root=b"\x00" * 32)
    with pytest.raises(InvalidBlockError, match="holds no stake"):
        chain.add_block(junk)
    assert not chain.knows(block_id(junk)) and not stored
    # a staker's side block lives in memory only; what is applied is stored once
    block, ident = _next_block(chain)
    side = make_block(IDS[(IDS.index(ident) + 1) % 4], network=NET, height=1,
                      parent=g_id(chain), slot=1, txs=[], state_root=chain.state.root())
    chain.add_block(block)
    chain.add_block(side)
    assert stored == [block]


def test_side_blocks_are_bounded_in_bytes():
    chain = Chain(genesis(finality_depth=100), max_side_bytes=2_000)
    run_slots(chain, range(1, 12))
    assert chain.height >= 3
    base = chain.canonical_id(1)
    assert base is not None
    kept = 0
    for ident in IDS[:4]:
        for slot in range(100, 110):
            side = make_block(ident, network=NET, height=2, parent=base, slot=slot, txs=[],
                              state_root=b"\x00" * 32)
            try:
                chain.add_block(side)
                kept += 1
            except InvalidBlockError:
                pass
    assert kept > 8
    assert sum(chain._entries[b].size for b in chain._side) <= 2_000


def g_id(chain: Chain) -> bytes:
    return chain.genesis.id


def test_finality_needs_two_thirds_of_stake_and_forbids_deeper_forks():
    chain = Chain(genesis(3, finality_depth=2))
    run_slots(chain, range(1, 60))
    assert chain.height > 10 and chain.finalized_height >= chain.height - 10
    assert chain.finalized_height <= chain.height - 2
    # a fork from below the final height is refused
    g = genesis(3, finality_depth=2)
    fork = Chain(g)
    fork_blocks = run_slots(fork, range(1000, 1100))
    with pytest.raises(InvalidBlockError, match="below the final height"):
        chain.add_block(fork_blocks[0])


def test_a_minority_never_finalizes():
    # PEERS[0] holds 1/4 of the stake: alone, it grows a chain that never becomes final
    chain = Chain(genesis(4))
    run_slots(chain, range(1, 400), ids=[IDS[0]])
    assert chain.height > 50 and chain.finalized_height == 0


def test_orphans_wait_for_their_parent():
    g = genesis()
    a, b = Chain(g), Chain(g)
    blocks = run_slots(a, range(1, 10))
    assert len(blocks) >= 3
    for block in reversed(blocks):
        b.add_block(block)
    assert b.tip == a.tip


def test_pool_limits_and_expiry():
    chain = Chain(genesis(), pool_per_account=3, pool_expiry=10.0)
    for n in range(3):
        chain.add_tx(pay(0, 1, 1, n), now=0.0)
    with pytest.raises(InvalidTransactionError, match="too far ahead"):
        chain.add_tx(pay(0, 1, 1, 3), now=0.0)
    with pytest.raises(InvalidTransactionError, match="already pending"):
        chain.add_tx(pay(0, 1, 2, 0), now=0.0)
    with pytest.raises(InvalidTransactionError, match="already used"):
        chain.state.apply(pay(0, 1, 1, 0), 1)
        chain.add_tx(pay(0, 1, 3, 0), now=0.0)
    assert chain.expire(now=11.0) == 3 and not chain.pool


def test_the_pool_refuses_what_cannot_apply_and_shares_room_fairly():
    chain = Chain(genesis(balance=10 * UNIT), pool_size=8, pool_per_account=6)
    stranger = Identity.from_seed(b"\x77" * 32)
    free = sign_tx(Payment(network=NET, payer=stranger.peer_id, payee=PEERS[0], amount=1,
                           request_id="x", nonce=0), stranger)
    with pytest.raises(InvalidTransactionError, match="holds no credit"):
        chain.add_tx(free, now=0.0)  # a free key cannot fill any pool
    with pytest.raises(InvalidTransactionError, match="would spend"):
        chain.add_tx(pay(0, 1, 11 * UNIT, 0), now=0.0)  # more than the balance
    for n in range(6):
        chain.add_tx(pay(0, 1, 1, n), now=0.0)
    for n in range(2):
        chain.add_tx(pay(1, 0, 1, n), now=0.0)
    # full: the account with the most pending makes room for one with fewer
    chain.add_tx(pay(2, 0, 1, 0), now=0.0)
    assert len(chain.pending(PEERS[0])) == 5 and len(chain.pending(PEERS[2])) == 1


def test_a_skip_replaces_a_pending_transaction_that_cannot_apply():
    chain = Chain(genesis())
    chain.add_tx(pay(0, 1, UNIT, 0, rid="dup"), now=0.0)
    chain.add_tx(pay(0, 1, UNIT, 1, rid="dup"), now=0.0)  # a payment that can never apply
    chain.add_tx(pay(0, 1, UNIT, 2), now=0.0)
    run_slots(chain, range(1, 4))
    assert chain.state.nonce(PEERS[0]) == 1  # stuck: the proposer dropped nonce 1 ...
    assert [s.tx.nonce for s in chain.pending(PEERS[0])] == [2]
    skip = sign_tx(Skip(network=NET, account=PEERS[0], nonce=1), IDS[0])
    chain.add_tx(skip, now=1.0)
    assert chain.pending(PEERS[0])[0].tx.nonce == 1
    with pytest.raises(InvalidTransactionError, match="already pending"):
        chain.add_tx(pay(0, 1, UNIT, 1, rid="late"), now=1.0)  # no replacing a skip
    run_slots(chain, range(4, 8))
    assert chain.state.nonce(PEERS[0]) == 3  # ... and moving again
    assert not chain.pending(PEERS[0])
    # a skip also takes the place of its signer's pending transaction of that nonce
    other = Chain(genesis())
    other.add_tx(pay(0, 1, UNIT, 0), now=0.0)
    other.add_tx(sign_tx(Skip(network=NET, account=PEERS[0], nonce=0), IDS[0]), now=0.0)
    assert isinstance(other.pending(PEERS[0])[0].tx, Skip)


def test_a_judged_duel_settles_only_with_the_judges_drawn_at_its_checkpoint():
    g = genesis(6, finality_depth=4)
    chain = Chain(g)
    run_slots(chain, range(1, 10))
    req, xy = IDS[0], (IDS[1], IDS[2])
    anchor, drawn = chain.judge_draw(req.peer_id, {PEERS[1], PEERS[2]}, 2)
    assert anchor % 4 == 0 and len(drawn) == 2 and not {PEERS[0], PEERS[1], PEERS[2]} & set(drawn)
    by_id = {i.peer_id: i for i in IDS}
    others = [i for i in IDS[3:6] if i.peer_id not in drawn]
    # the red team's forgery: the requester's own choice of judges (and so of the winner)
    forged = signed_duel(req, xy, [by_id[drawn[0]], others[0]], ["B", "B"], network=NET,
                         anchor=anchor, nonce=0)
    assert chain.record_problem(decode_record(forged)) is not None
    chain.add_tx(sign_tx(forged, req), now=0.0)
    run_slots(chain, range(10, 14))
    assert (PEERS[0], forged.duel_id) not in chain.state.settled
    assert chain.state.stake(PEERS[1]) == 10 * UNIT  # nothing moved
    fair = signed_duel(req, xy, [by_id[j] for j in drawn], ["B", "B"], network=NET,
                       anchor=anchor, duel_id="duel-2", nonce=chain.state.nonce(PEERS[0]))
    assert chain.record_problem(decode_record(fair)) is None
    chain.add_tx(sign_tx(fair, req), now=0.0)
    run_slots(chain, range(14, 18))
    assert (PEERS[0], "duel-2") in chain.state.settled
    assert chain.state.stake(PEERS[1]) == 0  # the drawn judges' verdict: y won


def decode_record(settlement: DuelSettlement) -> DuelRecord:
    return unseal_record(settlement.evidence)


# ---- the block file -----------------------------------------------------------------------
def test_store_resumes_and_drops_a_torn_tail(tmp_path):
    g = genesis()
    store = BlockStore(tmp_path / "blocks")
    chain = Chain(g, on_block=lambda b: store.append(encode(b)))
    chain.add_tx(pay(0, 1, UNIT, 0), 0.0)
    run_slots(chain, range(1, 8))
    with open(store.path, "ab") as f:
        f.write(b"\x00\x00\x01\x00\xde\xad")  # a crash in the middle of an append
    size = store.path.stat().st_size
    assert len(BlockStore(store.path).load(repair=False)) == chain.height
    assert store.path.stat().st_size == size  # a reader never truncates
    again = Chain(g)
    from wwwserve.wire import decode
    for payload in BlockStore(store.path).load():
        again.add_block(decode(payload, expect=Block))
    assert again.tip == chain.tip and again.state.root() == chain.state.root()
    assert BlockStore(store.path).load()  # the tail was truncated: loads cleanly now


def test_store_truncates_a_zero_filled_tail_loudly(tmp_path, caplog):
    g = genesis()
    store = BlockStore(tmp_path / "blocks")
    chain = Chain(g, on_block=lambda b: store.append(encode(b)))
    run_slots(chain, range(1, 6))
    good = store.size()
    with open(store.path, "ab") as f:
        f.write(b"\x00" * 4096)  # a crash artefact: the length grew, the data never came
    replica = Chain(g)
    n = replay(replica, BlockStore(store.path))
    assert n == chain.height and replica.tip == chain.tip
    assert store.size() == good
    assert "torn" in caplog.text


def test_store_corruption_in_the_middle_is_an_error(tmp_path):
    store = BlockStore(tmp_path / "blocks")
    for k in range(3):
        store.append(b"block %d" % k)
    data = bytearray(store.path.read_bytes())
    data[10] ^= 0xFF  # inside the first record's payload
    store.path.write_bytes(bytes(data))
    with pytest.raises(LedgerCorruptError, match="offset 0"):
        store.load()


def test_genesis_yaml_round_trip_and_clear_errors(tmp_path):
    g = genesis(3, join_grant=2 * UNIT)
    path = tmp_path / "genesis.yaml"
    path.write_text(g.to_yaml())
    assert Genesis.load(path).id == g.id
    path.write_text("network: x\nallocations: [{account: nobody, credit: 1, staked: 1}]\n")
    with pytest.raises(ConfigError, match="not a valid peer id"):
        Genesis.load(path)
    path.write_text(f"network: x\nallocations: [{{account: {PEERS[0]}, credit: 1, "
                    "staked: 2}]\n")
    with pytest.raises(ConfigError, match=r"allocations\[0\]"):
        Genesis.load(path)
    path.write_text("network: x\nbogus: 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        Genesis.load(path)


def test_block_ids_ignore_the_signature_only():
    chain = Chain(genesis())
    block, _ = _next_block(chain)
    assert block_id(block) == block_id(dataclasses.replace(block, signature=b"x" * 64))
    assert block_id(block) != block_id(dataclasses.replace(block, slot=block.slot + 1))


def test_the_chain_goes_on_when_penalties_took_every_stake():
    """Duel penalties can leave nobody staked: the genesis stakers then draw the slots."""
    g = genesis(5)
    chain = Chain(g)
    state = chain.state
    for k in range(5):  # everyone unstakes everything (as if slashed to zero)
        chain.add_tx(sign_tx(Unstake(network=NET, account=PEERS[k], amount=10 * UNIT,
                                     nonce=0), IDS[k]), now=0.0)
    slot = 1
    while state.total_stake() > 0:
        for ident in IDS[:5]:
            chain.propose(ident, slot)
        slot += 1
    height = chain.height
    run_slots(chain, range(slot, slot + 20), IDS[:5])  # the genesis stakers also vote
    assert chain.height > height + 5
    assert chain.finalized_height > height


def test_an_unstake_overtaken_by_a_penalty_still_applies_with_what_is_left():
    """Otherwise it could never apply and would hold up the account's later transactions."""
    g = genesis(6)
    state = g.state()
    # PEERS[1] loses a duel: its whole stake (10) goes to the winner
    state.apply(sign_tx(signed_duel(IDS[0], (IDS[2], IDS[1]), IDS[3:6], ["A", "A", "A"],
                                    network=NET, rules=g.rules), IDS[0]), height=1)
    assert state.stake(PEERS[1]) == 0
    # its unstake of 10, signed before it knew, applies (moving nothing), and so does the
    # payment after it
    state.apply(sign_tx(Unstake(network=NET, account=PEERS[1], amount=10 * UNIT, nonce=0),
                        IDS[1]), height=2)
    state.apply(sign_tx(Payment(network=NET, payer=PEERS[1], payee=PEERS[2], amount=UNIT,
                                request_id="r", nonce=1), IDS[1]), height=2)
    assert state.nonce(PEERS[1]) == 2 and state.unbonding_total(PEERS[1]) == 0


def test_blocks_from_the_future_are_refused_beyond_the_clock_drift_allowed():
    from wwwserve.ledger.chain import MAX_CLOCK_DRIFT

    chain = Chain(genesis())
    ahead = int(MAX_CLOCK_DRIFT // chain.genesis.slot_length)
    block, _ = _next_block(chain, slot=10 + ahead)
    with pytest.raises(InvalidBlockError, match="now is 9"):
        chain.add_block(block, current_slot=9)
    # a peer whose clock runs up to MAX_CLOCK_DRIFT ahead of ours is not refused
    assert chain.add_block(block, current_slot=10) is AddResult.EXTENDED
