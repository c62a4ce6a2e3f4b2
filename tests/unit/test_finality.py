"""Finality by checkpoint votes (sans-IO): safety when voters switch branches, the voting
rules, votes inside blocks, the vote record on disk."""

from __future__ import annotations

import dataclasses

import pytest

from chain_driver import Voters
from wwwserve.errors import InvalidBlockError, InvalidVoteError, LedgerCorruptError
from wwwserve.identity import Identity
from wwwserve.ledger import (
    UNIT,
    Allocation,
    Block,
    BlockStore,
    Chain,
    Genesis,
    Vote,
    VoteRecord,
    make_block,
)
from wwwserve.ledger.block import sign_block
from wwwserve.ledger.finality import decode_vote, sign_vote, slashable
from wwwserve.wire import decode, encode

NET = "test"
IDS = [Identity.from_seed(bytes([40 + i]) * 32) for i in range(5)]
PEERS = [i.peer_id for i in IDS]


def genesis(n: int = 4, stakes: list[int] | None = None) -> Genesis:
    stakes = stakes or [10 * UNIT] * n
    return Genesis(network=NET, time=0.0, allocations=tuple(
        Allocation(p, 100 * UNIT, s) for p, s in zip(PEERS[:n], stakes, strict=True)),
        finality_depth=2)


def test_votes_of_two_thirds_finalize_and_a_replica_replaying_the_blocks_agrees(tmp_path):
    store = BlockStore(tmp_path / "blocks")
    chain = Chain(genesis(), on_block=lambda b: store.append(encode(b)))
    Voters().grow(chain, range(1, 40), IDS[:4], IDS[:4])
    assert chain.height > 15
    # the final checkpoint trails the tip by about two checkpoints (votes ride in blocks)
    assert chain.height - 6 <= chain.finalized_height < chain.height
    assert chain.finalized_height % 2 == 0
    assert chain.finality.last_justified.height > chain.finalized_height
    again = Chain(chain.genesis)
    for payload in store.load():
        again.add_block(decode(payload, expect=Block))
    assert again.finalized_height == chain.finalized_height
    assert again.finality == chain.finality


def test_a_third_of_the_stake_voting_never_finalizes():
    chain = Chain(genesis())
    # everyone proposes, but only two of four (half the stake) vote
    Voters().grow(chain, range(1, 80), IDS[:4], IDS[:2])
    assert chain.height > 30 and chain.finalized_height == 0


def test_voters_that_switch_branches_cannot_make_two_conflicting_blocks_final():
    """The case that broke the proposer-counting rule: B and C build and vote on branch X,
    then (say, after a partition) switch to a longer branch Y that D built. Their votes on
    X locked them: on Y they may not vote from a lower source, so Y never finalizes."""
    g = genesis()
    x, y = Chain(g), Chain(g)
    voters = Voters()
    voters.grow(x, range(1, 40), IDS[:3], IDS[:3])  # A, B, C: 3/4 of the stake
    assert x.finalized_height > 0
    blocks_y = voters.grow(y, range(1000, 1200), IDS[1:4], IDS[1:4])  # B, C switch; D
    assert y.height > x.height
    assert y.finalized_height == 0
    # and x refuses y's branch: it forks below x's final checkpoint
    with pytest.raises(InvalidBlockError, match="below the final height"):
        x.add_block(blocks_y[0])


def test_a_double_vote_and_a_surrounding_vote_are_recorded_as_evidence():
    chain = Chain(genesis(5))
    Voters().grow(chain, range(1, 12), IDS[:5], IDS[:4])
    g = chain.genesis.id
    a = Vote(network=NET, voter=PEERS[4], source_height=0, source=g, target_height=40,
             target=b"\x01" * 32)
    chain.add_vote(sign_vote(a, IDS[4]))
    twin = dataclasses.replace(a, target=b"\x02" * 32)
    with pytest.raises(InvalidVoteError, match="twice or around"):
        chain.add_vote(sign_vote(twin, IDS[4]))
    inner = Vote(network=NET, voter=PEERS[4], source_height=20, source=b"\x03" * 32,
                 target_height=30, target=b"\x04" * 32)
    with pytest.raises(InvalidVoteError, match="twice or around"):
        chain.add_vote(sign_vote(inner, IDS[4]))
    assert chain.vote_equivocations == [(a, twin), (a, inner)]
    assert slashable(a, inner) and slashable(inner, a) and not slashable(a, a)


@pytest.mark.parametrize("case", ["not a checkpoint", "target off the branch",
                                  "source not justified", "voter without stake",
                                  "same vote twice", "forged signature"])
def test_a_block_with_a_vote_it_may_not_carry_is_rejected(case):
    g = genesis(4, [10 * UNIT] * 3 + [0])  # PEERS[3] holds no stake
    chain = Chain(g)
    voters = Voters()
    voters.grow(chain, range(1, 10), IDS[:3], IDS[:3])
    fin = chain.finality
    source = fin.last_justified
    target_height = chain.height // 2 * 2
    if target_height <= source.height:
        voters.grow(chain, range(10, 14), IDS[:3], [])
        target_height = chain.height // 2 * 2
    vote = Vote(network=NET, voter=PEERS[0], source_height=source.height, source=source.id,
                target_height=target_height, target=chain.canonical_id(target_height) or b"")
    signer = IDS[0]
    if case == "not a checkpoint":
        vote = dataclasses.replace(vote, target_height=target_height - 1,
                                   target=chain.canonical_id(target_height - 1) or b"")
    elif case == "target off the branch":
        vote = dataclasses.replace(vote, target=b"\x07" * 32)
    elif case == "source not justified":
        vote = dataclasses.replace(vote, source_height=target_height - 2,
                                   source=b"\x08" * 32)
    elif case == "voter without stake":
        vote = dataclasses.replace(vote, voter=PEERS[3])
        signer = IDS[3]
    envelopes = [sign_vote(vote, signer).envelope]
    if case == "same vote twice":
        envelopes *= 2
    elif case == "forged signature":
        envelopes = [sign_vote(dataclasses.replace(vote, voter=PEERS[1]), IDS[1]).envelope
                     .replace(PEERS[1].encode(), PEERS[0].encode())]
    ident = next(i for i in IDS if i.peer_id == chain.leader_of(100))
    good = make_block(ident, network=NET, height=chain.height + 1, parent=chain.tip, slot=100,
                      txs=[], state_root=chain.state.root())
    block = dataclasses.replace(good, votes=tuple(envelopes), signature=b"")
    block = sign_block(block, ident)
    reason = {"not a checkpoint": "not a checkpoint", "target off the branch": "not on this",
              "source not justified": "not justified", "voter without stake": "no stake",
              "same vote twice": "already voted", "forged signature": "bad vote"}[case]
    with pytest.raises(InvalidBlockError, match=reason):
        chain.add_block(block)
    assert chain.add_block(good).value == "extended"  # the same block without it is fine


def test_vote_envelopes_decode_only_when_signed_by_their_voter():
    vote = Vote(network=NET, voter=PEERS[0], source_height=0, source=b"\x00" * 32,
                target_height=2, target=b"\x01" * 32)
    sv = sign_vote(vote, IDS[0])
    assert decode_vote(sv.envelope).vote == vote
    with pytest.raises(InvalidVoteError):
        sign_vote(vote, IDS[1])
    with pytest.raises(InvalidVoteError):
        decode_vote(sv.envelope[:-3])
    with pytest.raises(InvalidVoteError, match="not below"):
        decode_vote(sign_vote(dataclasses.replace(vote, source_height=2), IDS[0]).envelope)


def test_the_vote_record_survives_a_restart_and_refuses_damage(tmp_path):
    record = VoteRecord(tmp_path / "node" / "last_vote")
    assert record.load() == (0, 0)
    record.save(4, 6)
    assert VoteRecord(record.path).load() == (4, 6)
    record.path.write_text("garbage")
    with pytest.raises(LedgerCorruptError, match="last_vote"):
        record.load()


def test_the_branch_with_the_higher_justified_checkpoint_wins_even_if_shorter():
    """Fork choice as in Casper FFG: otherwise voters whose last vote came from a justified
    checkpoint that the longer branch lacks could never vote again, and finality would
    stall for good (deterministic simulation found such stalls)."""
    g = genesis()
    x, y, z = Chain(g), Chain(g), Chain(g)
    blocks_x = Voters().grow(x, range(1, 20), IDS[:3], IDS[:3])
    blocks_y = Voters().grow(y, range(100, 300), IDS[3:4], IDS[3:4])  # D alone: 1/4
    assert y.height > x.height and x.finality.last_justified.height > 0
    assert y.finality.last_justified.height == 0
    for block in blocks_y:
        z.add_block(block)
    assert z.tip == y.tip
    for block in blocks_x:
        z.add_block(block)
    assert z.tip == x.tip and z.finalized_height == x.finalized_height


def test_the_vote_pool_takes_only_stakers_votes_near_the_tip_and_a_few_per_voter():
    g = genesis(4, [10 * UNIT] * 3 + [0])  # PEERS[3] holds no stake
    chain = Chain(g)
    Voters().grow(chain, range(1, 6), IDS[:3], [])

    def vote(k: int, target: int) -> Vote:
        return Vote(network=NET, voter=PEERS[k], source_height=0, source=g.id,
                    target_height=target, target=bytes([target % 256]) * 32)

    with pytest.raises(InvalidVoteError, match="no stake"):
        chain.add_vote(sign_vote(vote(3, 4), IDS[3]))
    with pytest.raises(InvalidVoteError, match="too far ahead"):
        chain.add_vote(sign_vote(vote(0, chain.height + 1000), IDS[0]))
    for target in range(2, 200, 2):  # a flood by one staker keeps its newest 32
        if target <= chain.height + 64:
            chain.add_vote(sign_vote(vote(0, target), IDS[0]))
    mine = sorted(h for (v, h) in chain.votes if v == PEERS[0])
    assert len(mine) == 32 and mine[-1] == (chain.height + 64) // 2 * 2
