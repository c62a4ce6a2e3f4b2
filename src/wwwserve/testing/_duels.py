"""Signed duel evidence for tests of the ledger and of duel settlements."""

from __future__ import annotations

from collections.abc import Sequence

from ..evidence import (
    AnswerReceipt,
    DuelEvidence,
    DuelRecord,
    VoteCommit,
    VoteReveal,
    commitment,
    digest,
    tally,
)
from ..identity import Identity
from ..ledger.state import Rules
from ..ledger.tx import DuelSettlement
from ..wire import encode, seal

__all__ = ["signed_duel"]

#: Someone in a duel: a keypair, or only a peer id for a party that signs nothing
#: (an executor whose answer is missing, a judge that never committed).
Party = Identity | str


def _peer(party: Party) -> str:
    return party if isinstance(party, str) else party.peer_id


def _key(party: Party, role: str) -> Identity:
    if isinstance(party, str):
        raise TypeError(f"{role} {party[-8:]} must sign, so it needs a keypair, not a peer id")
    return party


def signed_duel(
    requester: Identity,
    executors: tuple[Party, Party],
    judges: Sequence[Party],
    verdicts: Sequence[str | None],
    *,
    network: str,
    rules: Rules | None = None,
    duel_id: str = "duel-1",
    answers: tuple[str | None, str | None] = ("answer x", "answer y"),
    x_first: Sequence[bool] | None = None,
    nonce: int = 0,
    anchor: int = -1,
) -> DuelSettlement:
    """A duel settlement with real signed evidence, for tests.

    ``verdicts[i]`` is judge ``i``'s vote as it saw the answers (``A``, ``B``, ``tie``,
    ``abstain``), None for a judge that committed but never revealed, or ``"-"`` for one
    that never committed. ``anchor``: the record's checkpoint height (on a chain the
    judges must be the ones drawn there). Each answer
    (None: missing) comes with its executor's signed receipt. Winner, loser and
    judge groups are what the evidence implies (so the settlement is valid unless the
    test changes it); amounts are ``rules``' (default: the authors'). A party that signs
    nothing (missing answer, ``"-"`` judge) may be given as a bare peer id: that is how a
    forger names a victim whose key it does not have.
    """
    rules = rules or Rules(network)
    order = tuple(x_first) if x_first is not None else (True,) * len(judges)
    record = DuelRecord(network=network, duel_id=duel_id, requester=requester.peer_id,
                        executors=(_peer(executors[0]), _peer(executors[1])),
                        answers=tuple(digest(a) if a is not None else b"" for a in answers),
                        judges=tuple(_peer(j) for j in judges), x_first=order,
                        anchor=anchor)
    record_env = encode(seal(record, requester))
    commits, reveals, votes = [], [], {}
    for party, verdict in zip(judges, verdicts, strict=True):
        if verdict == "-":
            continue
        judge = _key(party, "a judge that committed")
        salt = judge.peer_id.encode()[:16]
        shown = verdict or "abstain"
        commits.append(encode(seal(VoteCommit(
            network=network, duel_id=duel_id, requester=requester.peer_id,
            judge=judge.peer_id, record=digest(record_env),
            commitment=commitment(duel_id, judge.peer_id, shown, salt)), judge)))
        if verdict is not None:
            reveals.append(encode(seal(VoteReveal(
                network=network, duel_id=duel_id, requester=requester.peer_id,
                judge=judge.peer_id, verdict=verdict, salt=salt), judge)))
            votes[judge.peer_id] = verdict
    committed = {_peer(j) for j, v in zip(judges, verdicts, strict=True) if v != "-"}
    outcome = tally(record, votes, committed=committed)
    receipts = tuple(
        encode(seal(AnswerReceipt(requester=requester.peer_id, request_id=f"{duel_id}-{k}",
                                  digest=digest(answer)),
                    _key(executor, "an executor that answered")))
        for k, (executor, answer) in enumerate(zip(executors, answers, strict=True))
        if answer is not None)
    evidence = encode(DuelEvidence(record=record_env, receipts=receipts,
                                   commits=tuple(commits), reveals=tuple(reveals)))
    return DuelSettlement(
        network=network, requester=requester.peer_id, duel_id=duel_id,
        winner=outcome.winner, loser=outcome.loser, reward=rules.duel_reward,
        loser_penalty_ppm=rules.duel_loser_ppm, majority=outcome.majority,
        minority=outcome.minority, silent=outcome.silent,
        minority_penalty_ppm=rules.duel_minority_ppm,
        silent_penalty_ppm=rules.duel_silent_ppm, evidence=evidence, nonce=nonce)
