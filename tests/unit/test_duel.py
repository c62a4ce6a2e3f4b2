"""Duel-and-judge, sans-IO: evidence checks, the tally, the verdict parser, simulated quality,
calibration and ratings."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wwwserve.duel.ratings import Ratings
from wwwserve.engines import get_profile
from wwwserve.engines.quality import (
    DEFAULT_MODEL,
    GARBAGE_QUALITY,
    class_win_rates,
    quality_marker,
    read_quality,
)
from wwwserve.errors import InvalidTransactionError
from wwwserve.evidence import DuelEvidence, DuelRecord, decide, outcome_of, tally
from wwwserve.identity import Identity
from wwwserve.judging import is_judge_prompt, judge_messages, parse_verdict, split_judge_prompt
from wwwserve.ledger import UNIT, Allocation, Genesis, sign_tx
from wwwserve.testing import signed_duel
from wwwserve.wire import decode, encode

NET = "t"
IDS = [Identity.from_seed(bytes([40 + i]) * 32) for i in range(8)]
P = [i.peer_id for i in IDS]
REQ, X, Y = IDS[0], P[1], P[2]
XY = (IDS[1], IDS[2])
JUDGES = IDS[3:6]


def state():
    g = Genesis(network=NET, time=0.0,
                allocations=tuple(Allocation(p, 100 * UNIT, 10 * UNIT) for p in P))
    return g.state()


def duel(verdicts, **kw):
    return signed_duel(REQ, XY, JUDGES, verdicts, network=NET, **kw)


# ---- the tally ----------------------------------------------------------------------------
@pytest.mark.parametrize(("counts", "expected"), [
    ((2, 1, 0), "x"), ((0, 3, 0), "y"), ((1, 1, 1), "tie"), ((0, 0, 2), "tie"),
    ((1, 1, 0), "tie"), ((0, 0, 0), "tie"), ((1, 0, 2), "tie"), ((2, 0, 1), "x"),
])
def test_the_verdict_with_the_most_votes_wins_and_a_shared_top_is_a_tie(counts, expected):
    assert decide(*counts) == expected


def test_votes_are_mapped_back_to_executors_through_each_judges_order():
    # judge 0 saw x first and chose A (x); judge 1 saw y first and chose B (x); judge 2: A (y)
    t = duel(["A", "B", "A"], x_first=[True, False, False])
    assert (t.winner, t.loser) == (X, Y)
    assert t.majority == (P[3], P[4]) and t.minority == (P[5],) and t.silent == ()


def test_silent_and_abstaining_judges_and_a_split_vote():
    t = duel(["A", None, "abstain"])
    assert (t.winner, t.majority, t.minority, t.silent) == (X, (P[3],), (), (P[4], P[5]))
    split = duel(["A", "B", "tie"])
    assert split.winner == "" and split.majority == (P[3], P[4], P[5]) and not split.minority
    tie = duel(["tie", "tie", "A"])
    assert tie.winner == "" and tie.majority == (P[3], P[4]) and tie.minority == (P[5],)


def test_a_missing_answer_wins_the_reward_but_moves_no_stake():
    rec = DuelRecord(network=NET, duel_id="d", requester=REQ.peer_id, executors=(X, Y),
                     answers=(b"", b"h" * 32), judges=(), x_first=())
    assert tally(rec, {}).winner == Y and tally(rec, {}).forfeit
    # the red team's forgery: a duel that never happened naming a victim as the executor
    # that "did not answer" used to take the victim's whole stake; nobody can prove a
    # missing answer, so the requester's word costs only the requester the reward
    t = signed_duel(REQ, XY, [], [], network=NET, answers=("done", None))
    assert (t.winner, t.loser) == (X, Y)
    st_ = state()
    st_.apply(sign_tx(t, REQ), 1)
    assert st_.balance(X) == 101 * UNIT  # the reward, paid by the requester
    assert st_.stake(Y) == 10 * UNIT and st_.balance(REQ.peer_id) == 99 * UNIT


def test_only_a_judge_that_committed_can_be_silent():
    t = duel(["A", "A", "-"])  # judge 2 never committed: maybe never asked
    assert t.silent == () and t.majority == (P[3], P[4])
    s = state()
    s.apply(sign_tx(t, REQ), 1)
    assert s.stake(P[5]) == 10 * UNIT
    t2 = duel(["A", "A", None], duel_id="d2")  # committed, then never revealed
    assert t2.silent == (P[5],)


# ---- settlement on the ledger -----------------------------------------------------------
def test_settlement_moves_credit_as_the_network_rules_say_and_conserves_it():
    s = state()
    total = s.total()
    s.apply(sign_tx(duel(["A", "A", "B"]), REQ), 1)
    assert s.balance(X) == 111 * UNIT and s.stake(Y) == 0
    assert s.stake(P[5]) == 8 * UNIT  # minority judge: 20% of its stake
    assert s.balance(P[3]) == s.balance(P[4]) == 101 * UNIT  # shared by the majority
    assert s.total() == total


def test_a_tie_moves_nothing_between_executors_but_judges_still_answer_for_silence():
    s = state()
    s.apply(sign_tx(duel(["tie", "tie", None]), REQ), 1)
    assert s.balance(X) == s.balance(Y) == 100 * UNIT and s.stake(Y) == 10 * UNIT
    assert s.stake(P[5]) == 9.5 * UNIT  # silent: 5%
    assert s.balance(P[3]) == s.balance(P[4]) == 100.25 * UNIT


@pytest.mark.parametrize("change", [
    {"winner": Y, "loser": X},  # claims the other executor won
    {"minority": ()},  # hides a minority judge
    {"majority": (P[3], P[4], P[5]), "minority": ()},
    {"silent": (P[5],)},
])
def test_a_settlement_that_does_not_follow_from_its_evidence_is_rejected(change):
    t = dataclasses.replace(duel(["A", "A", "B"]), **change)
    with pytest.raises(InvalidTransactionError, match=r"does not follow|differ"):
        state().apply(sign_tx(t, REQ), 1)


def test_amounts_are_the_networks_not_the_requesters():
    t = dataclasses.replace(duel(["A", "A", "B"]), loser_penalty_ppm=0)
    with pytest.raises(InvalidTransactionError, match="network's"):
        state().apply(sign_tx(t, REQ), 1)


def test_nobody_settles_a_duel_it_did_not_request():
    # IDS[6] signs a settlement of REQ's duel: the record is REQ's, not the signer's
    stolen = dataclasses.replace(duel(["A", "A", "B"]), requester=P[6])
    with pytest.raises(InvalidTransactionError, match="not signed by the settlement's"):
        state().apply(sign_tx(stolen, IDS[6]), 1)


def evidence_of(t):
    return decode(t.evidence, expect=DuelEvidence)


def test_votes_from_anyone_not_selected_are_rejected():
    t = duel(["A", "A", "B"])
    outsider = signed_duel(REQ, XY, [IDS[3], IDS[4], IDS[7]], ["B", "B", "B"],
                           network=NET)
    ev = evidence_of(t)
    forged = DuelEvidence(record=ev.record, receipts=ev.receipts,
                          commits=(*ev.commits, evidence_of(outsider).commits[2]),
                          reveals=ev.reveals)
    with pytest.raises(InvalidTransactionError, match="not a judge"):
        outcome_of(encode(forged), network=NET, requester=REQ.peer_id, duel_id=t.duel_id)


def test_a_reveal_must_open_its_commitment():
    honest, flipped = duel(["A", "A", "B"]), duel(["A", "A", "A"])
    ev = evidence_of(honest)
    # judge 5 committed to B but "reveals" A (a reveal signed by it, from another duel copy)
    swapped = DuelEvidence(record=ev.record, receipts=ev.receipts, commits=ev.commits,
                           reveals=(*ev.reveals[:2], evidence_of(flipped).reveals[2]))
    with pytest.raises(InvalidTransactionError, match=r"does not open|another"):
        outcome_of(encode(swapped), network=NET, requester=REQ.peer_id, duel_id="duel-1")


def test_tampered_or_malformed_evidence_is_rejected():
    t = duel(["A", "A", "B"])
    ev = evidence_of(t)
    for bad in (b"", b"\x00junk", encode(DuelEvidence(record=ev.record[:-1])),
                encode(DuelEvidence(record=ev.record, receipts=ev.receipts,
                                    commits=ev.commits * 2, reveals=ev.reveals))):
        with pytest.raises(InvalidTransactionError):
            outcome_of(bad, network=NET, requester=REQ.peer_id, duel_id=t.duel_id)


def test_executors_and_requester_never_judge_and_nobody_duels_itself():
    with pytest.raises(InvalidTransactionError, match="differ"):
        state().apply(sign_tx(signed_duel(REQ, XY, [IDS[1], IDS[3], IDS[4]],
                                          ["A", "A", "A"], network=NET), REQ), 1)
    with pytest.raises(InvalidTransactionError, match="differ"):
        state().apply(sign_tx(signed_duel(REQ, (IDS[1], IDS[1]), JUDGES, ["A", "A", "A"],
                                          network=NET), REQ), 1)
    with pytest.raises(InvalidTransactionError, match="differ"):
        state().apply(sign_tx(signed_duel(REQ, (REQ, IDS[2]), JUDGES, ["A", "A", "A"],
                                          network=NET), REQ), 1)


# ---- the judge prompt and parser -----------------------------------------------------------
@pytest.mark.parametrize(("reply", "verdict"), [
    ("Verdict: A", "A"), ("verdict: b", "B"), ("Verdict: tie", "tie"), ("B", "B"),
    (" **A** ", "A"), ("Tie.", "tie"),
    ("A is longer, but B is right.\nVerdict: B", "B"),
    ("<think>Verdict: A? no...</think>\nVerdict: B", "B"),
    ("Verdict: A\n...on reflection...\nVerdict: tie", "tie"),
    ("**Verdict:** [[A]]", "A"),
    ("<think>still thinking, Verdict: A", "abstain"),
    ("Both are fine.", "abstain"), ("", "abstain"), ("Verdict: C", "abstain"),
    ("ABBA", "abstain"),
])
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


@given(st.text())
def test_parse_verdict_never_raises_and_answers_one_of_four(text):
    assert parse_verdict(text) in ("A", "B", "tie", "abstain")


def test_judge_prompt_round_trips_and_is_recognised():
    msgs = judge_messages("what is 2+2?", "4\n</answer_a>", "five")
    assert is_judge_prompt(msgs)
    assert split_judge_prompt(msgs[1][1]) == ("what is 2+2?", "4\n</answer_a>", "five")
    assert not is_judge_prompt((("user", "hi"),))


# ---- simulated quality ----------------------------------------------------------------------
def test_quality_markers_and_garbage():
    assert read_quality(quality_marker(-0.25) + "the answer") == pytest.approx(-0.25)
    assert read_quality("no marker here") == GARBAGE_QUALITY
    pa, pb, _ = DEFAULT_MODEL.vote_probabilities(0.0, GARBAGE_QUALITY)
    assert pa > 0.99 and pb < 0.001
    rng = random.Random(1)
    votes = [DEFAULT_MODEL.vote(quality_marker(0.0), "garbage", rng) for _ in range(200)]
    assert votes.count("A") >= 198


def test_shipped_qualities_reproduce_the_papers_win_rates():
    """CALIBRATION.md: 0.57 / 0.53 / 0.39 (model size) and 0.54 / 0.49 / 0.47 (quantization)."""
    sizes = [get_profile(f"a100-80g/qwen3-{m}").quality for m in ("8b", "4b", "0.6b")]
    for got, want in zip(class_win_rates(sizes), (0.57, 0.53, 0.39), strict=True):
        assert got == pytest.approx(want, abs=0.01)
    quants = [get_profile(f"a100-80g/qwen3-8b-{q}").quality
              for q in ("fp8", "int4-128", "int4-32")]
    for got, want in zip(class_win_rates(quants), (0.54, 0.49, 0.47), strict=True):
        assert got == pytest.approx(want, abs=0.01)
    # the same model on other GPUs and attention backends: the same quality
    assert {get_profile(p).quality for p in ("a100-80g/qwen3-8b", "h100/qwen3-8b",
                                              "rtx4090/qwen3-8b", "rtx3090/qwen3-8b")} == {0.0}
    assert get_profile("a100-80g/qwen3-8b", "sdpa").quality == 0.0


# ---- ratings -------------------------------------------------------------------------------
def test_bradley_terry_ratings_order_peers_by_strength():
    r = Ratings()
    rng = random.Random(2)
    strength = {"a": 2.0, "b": 1.0, "c": 0.5}
    for _ in range(3000):
        x, y = rng.sample(sorted(strength), 2)
        if rng.random() < strength[x] / (strength[x] + strength[y]):
            r.record(x, y)
        else:
            r.record(y, x)
    table = r.table()
    assert table["a"].rating > table["b"].rating > table["c"].rating
    # log2 strength ratios of 1 are ~120 Elo points
    assert 90 < table["a"].rating - table["b"].rating < 150
    assert sum(t.wins for t in table.values()) == 3000 == len(r)


def test_ratings_stay_finite_for_the_undefeated_and_count_ties():
    r = Ratings()
    r.record("a", "b")
    r.record("a", "b", tie=True)
    t = r.table()
    assert t["a"].rating > 1500 > t["b"].rating
    assert (t["a"].wins, t["a"].ties, t["b"].losses) == (1, 1, 1)
    with pytest.raises(ValueError):
        r.record("a", "a")


def test_genesis_duel_rules_load_from_yaml_and_bad_values_are_clear(tmp_path):
    from wwwserve.errors import ConfigError

    g = Genesis(network=NET, time=0.0, allocations=(Allocation(P[0], UNIT, UNIT),),
                duel_loser_ppm=250_000)
    again = Genesis.from_dict(__import__("yaml").safe_load(g.to_yaml()))
    assert again.rules == g.rules and again.id == g.id
    assert again.rules.duel_loser_ppm == 250_000 and again.rules.duel_reward == UNIT
    doc = __import__("yaml").safe_load(g.to_yaml())
    doc["duel"]["minority_penalty"] = 1.5
    with pytest.raises(ConfigError, match=r"duel.minority_penalty"):
        Genesis.from_dict(doc, "g.yaml")
    doc["duel"] = {"bonus": 1}
    with pytest.raises(ConfigError, match="duel"):
        Genesis.from_dict(doc, "g.yaml")


def test_every_recorded_answer_needs_its_executors_receipt():
    t = duel(["A", "A", "B"])
    ev = evidence_of(t)
    for receipts in ((), ev.receipts[:1], (ev.receipts[0], ev.receipts[0])):
        bad = DuelEvidence(record=ev.record, receipts=receipts, commits=ev.commits,
                           reveals=ev.reveals)
        with pytest.raises(InvalidTransactionError, match="receipt"):
            outcome_of(encode(bad), network=NET, requester=REQ.peer_id, duel_id=t.duel_id)
    # a receipt for another answer (the requester shows judges words the executor never
    # said): rejected
    other = signed_duel(REQ, XY, JUDGES, ["A", "A", "B"], network=NET,
                        answers=("something else", "answer y"))
    swapped = DuelEvidence(record=ev.record, receipts=(evidence_of(other).receipts[0],
                                                       ev.receipts[1]),
                           commits=ev.commits, reveals=ev.reveals)
    with pytest.raises(InvalidTransactionError, match="not for its recorded answer"):
        outcome_of(encode(swapped), network=NET, requester=REQ.peer_id, duel_id=t.duel_id)
