"""Duel evidence: the requester's record, the judges' commits and reveals, and the tally.

Sans-IO and deterministic, so every ledger replica derives the same outcome from the same
evidence (``outcome_of()``) and rejects a settlement that claims anything else.

- The **record** (``DuelRecord``, signed by the requester) names the duel, its two
  executors, the SHA-256 of each one's answer (empty: it did not answer in time), the judges
  and, per judge, which answer it was shown first. Every answer in the record comes with
  its executor's signed ``AnswerReceipt`` for that digest, so a requester cannot put
  words in an executor's mouth (an answer without a receipt counts as no answer).
- Each judge **commits** (``VoteCommit``, signed by the judge) to
  ``commitment(duel_id, judge, verdict, salt)`` over the record's digest, then **reveals**
  (``VoteReveal``) the verdict and salt. A commit cannot be changed after the judge
  sees others' votes, so judges cannot copy each other.
- The **tally** (``tally()``): each judge's ``A`` / ``B`` is mapped back to an executor
  through the order it was shown. The verdict with the most votes wins; if two verdicts
  share the most votes the duel is a tie. Judges who voted the winning verdict are the
  majority, the other voters the minority; a judge that committed nothing, revealed
  nothing (or a reveal that does not match its commit), or abstained is silent. In a tie
  without a plurality every voter counts as majority (nobody voted against the outcome).
- A duel with one missing answer needs no judges: the executor that answered wins the
  reward, but no stake moves (``Outcome.forfeit``): nobody can prove that an answer
  did not come, so the requester's word must cost nobody else anything.
- Only a judge whose commit is in the evidence can be **silent** (penalised): a judge
  that never committed may never have been asked.
- On a ledger the **judges are drawn, not chosen** (``draw_judges()``): stake-weighted
  from the stake table of the checkpoint named in the record (``anchor``), seeded with that
  checkpoint's block id and the requester, skipping the requester and the executors.
  Every replica redraws them, and so does every judge before it evaluates anything.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from .errors import InvalidTransactionError, ProtocolError
from .identity import canonical_bytes
from .wire import Message, Signed, decode, message, unseal

__all__ = [
    "VERDICTS",
    "AnswerReceipt",
    "DuelEvidence",
    "DuelRecord",
    "Outcome",
    "VoteCommit",
    "VoteReveal",
    "commitment",
    "decide",
    "digest",
    "draw_judges",
    "outcome_of",
    "tally",
]

_V = TypeVar("_V", "VoteCommit", "VoteReveal")

#: What a judge may reveal: the first answer, the second, a tie, or no opinion.
VERDICTS = ("A", "B", "tie", "abstain")


@message("duel-record", 2)
@dataclass(frozen=True, slots=True, kw_only=True)
class DuelRecord(Message):
    """The requester's account of a duel (see the module docs)."""

    network: str
    duel_id: str
    requester: str
    executors: tuple[str, ...]
    answers: tuple[bytes, ...]
    judges: tuple[str, ...]
    x_first: tuple[bool, ...]
    #: height of the checkpoint whose stake table and block id drew the judges (-1: no
    #: ledger, judges drawn from the requester's peer table)
    anchor: int = -1


@message("duel-commit", 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class VoteCommit(Message):
    """A judge's binding, still secret vote on the record with SHA-256 ``record``."""

    network: str
    duel_id: str
    requester: str
    judge: str
    record: bytes
    commitment: bytes


@message("duel-reveal", 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class VoteReveal(Message):
    """A judge's vote and the salt that opens its commitment."""

    network: str
    duel_id: str
    requester: str
    judge: str
    verdict: str
    salt: bytes


@message("answer-receipt", 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class AnswerReceipt(Message):
    """An executor's signed word that it answered ``request_id`` for ``requester`` with a
    text of SHA-256 ``digest`` (sent after every offloaded answer, duelled or not)."""

    requester: str
    request_id: str
    digest: bytes


@message("duel-evidence", 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class DuelEvidence(Message):
    """What a settlement carries: the signed record, the executors' answer receipts, the
    judges' commits and reveals (all signed envelopes)."""

    record: bytes
    receipts: tuple[bytes, ...] = ()
    commits: tuple[bytes, ...] = ()
    reveals: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Outcome:
    """A duel's result. ``winner`` and ``loser`` are empty for a tie."""

    winner: str
    loser: str
    majority: tuple[str, ...] = ()
    minority: tuple[str, ...] = ()
    silent: tuple[str, ...] = ()
    #: one executor gave no (receipted) answer: the other wins the reward, no stake moves
    forfeit: bool = False
    #: the record it was derived from (None for a bare ``tally()``)
    record: DuelRecord | None = None

    @property
    def tie(self) -> bool:
        """True if nothing moves between the executors."""
        return not self.winner


def digest(data: bytes | str) -> bytes:
    """SHA-256 of an answer's text (UTF-8) or of an envelope."""
    raw = data.encode() if isinstance(data, str) else data
    return hashlib.sha256(raw).digest()


def commitment(duel_id: str, judge: str, verdict: str, salt: bytes) -> bytes:
    """The hash a judge commits to before revealing ``verdict``."""
    return hashlib.sha256(b"wwwserve/vote/1" + canonical_bytes(
        [duel_id, judge, verdict, salt])).digest()


def decide(n_x: int, n_y: int, n_tie: int) -> str:
    """``"x"``, ``"y"`` or ``"tie"`` from vote counts (a shared top count is a tie)."""
    top = max(n_x, n_y, n_tie)
    if top == 0:
        return "tie"
    leaders = [name for name, n in (("x", n_x), ("y", n_y), ("tie", n_tie)) if n == top]
    return leaders[0] if len(leaders) == 1 else "tie"


def draw_judges(seed: bytes, requester: str, stakes: Mapping[str, int],
                exclude: Iterable[str], k: int) -> tuple[str, ...]:
    """The ``k`` judges of ``requester``'s duels at the checkpoint with block id ``seed``:
    drawn one after the other by stake (``stakes``, micro-credits), without replacement,
    skipping ``exclude`` (the requester and the executors). Fewer if fewer hold stake.
    Integer arithmetic only: every replica draws the same judges."""
    skip = set(exclude)
    left = {a: s for a, s in stakes.items() if s > 0 and a not in skip}
    chosen: list[str] = []
    base = hashlib.sha256(b"wwwserve/judges/1" + seed + requester.encode()).digest()
    while left and len(chosen) < k:
        total = sum(left.values())
        point = int.from_bytes(hashlib.sha256(
            base + len(chosen).to_bytes(4, "big")).digest(), "big") % total
        for account in sorted(left):
            if point < left[account]:
                chosen.append(account)
                del left[account]
                break
            point -= left[account]
    return tuple(chosen)


def tally(record: DuelRecord, votes: Mapping[str, str],
          committed: Collection[str] | None = None) -> Outcome:
    """The outcome of ``record`` given each revealed judge's verdict (see module docs).

    ``committed``: the judges whose commits are known; only they can be silent (default:
    every judge)."""
    x, y = record.executors
    if not record.answers[0] or not record.answers[1]:
        if not record.answers[0] and not record.answers[1]:
            raise ValueError("a duel where neither executor answered has no outcome")
        return Outcome(x, y, forfeit=True, record=record) if record.answers[0] \
            else Outcome(y, x, forfeit=True, record=record)
    choice: dict[str, str] = {}
    silent = []
    for judge, x_first in zip(record.judges, record.x_first, strict=True):
        verdict = votes.get(judge, "abstain")
        if verdict == "A":
            choice[judge] = "x" if x_first else "y"
        elif verdict == "B":
            choice[judge] = "y" if x_first else "x"
        elif verdict == "tie":
            choice[judge] = "tie"
        elif committed is None or judge in committed:
            silent.append(judge)
    counts = [sum(1 for c in choice.values() if c == k) for k in ("x", "y", "tie")]
    decision = decide(*counts)
    if counts.count(max(counts)) > 1:
        majority = tuple(choice)  # no plurality: nobody voted against the outcome
        minority: tuple[str, ...] = ()
    else:
        majority = tuple(j for j, c in choice.items() if c == decision)
        minority = tuple(j for j, c in choice.items() if c != decision)
    if decision == "x":
        return Outcome(x, y, majority, minority, tuple(silent), record=record)
    if decision == "y":
        return Outcome(y, x, majority, minority, tuple(silent), record=record)
    return Outcome("", "", majority, minority, tuple(silent), record=record)


def _bad(why: str) -> InvalidTransactionError:
    return InvalidTransactionError(f"duel evidence rejected: {why}")


def outcome_of(evidence: bytes, *, network: str, requester: str, duel_id: str) -> Outcome:
    """Verify ``evidence`` for ``requester``'s duel ``duel_id`` and return its outcome.

    Raises ``InvalidTransactionError`` naming what is wrong: a record not signed by
    the requester or for another duel, parties that are not distinct, a commit or reveal
    from anyone who is not one of the record's judges, a reveal that does not open its
    commitment, duplicates. (Cached: evidence is immutable and checked on every replay.)
    """
    return _outcome_of(evidence, network, requester, duel_id)


@functools.lru_cache(maxsize=1024)
def _outcome_of(evidence: bytes, network: str, requester: str, duel_id: str) -> Outcome:
    try:
        ev = decode(evidence, expect=DuelEvidence)
        envelope = decode(ev.record, expect=Signed)
        record = unseal(envelope, expect=DuelRecord)
    except ProtocolError as exc:
        raise _bad(f"malformed record: {exc}") from None
    if envelope.signer != requester or record.requester != requester:
        raise _bad("the record is not signed by the settlement's requester")
    if record.network != network or record.duel_id != duel_id:
        raise _bad("the record is for another network or duel")
    if len(record.executors) != 2 or len(record.answers) != 2:
        raise _bad("a duel has exactly two executors and two answer digests")
    if len(record.x_first) != len(record.judges):
        raise _bad("the record needs one answer order per judge")
    parties = [*record.executors, *record.judges, requester]
    if len(set(parties)) != len(parties):
        raise _bad("executors, judges and requester must all differ")
    if any(a and len(a) != 32 for a in record.answers):
        raise _bad("answer digests are SHA-256 (32 bytes) or empty")
    missing = sum(1 for a in record.answers if not a)
    if missing == 2:
        raise _bad("neither executor answered: there is nothing to settle")
    if missing and (record.judges or ev.commits or ev.reveals):
        raise _bad("a duel with a missing answer is not judged")
    receipted = set()
    for raw in ev.receipts:
        try:
            envelope_r = decode(raw, expect=Signed)
            receipt = unseal(envelope_r, expect=AnswerReceipt)
        except ProtocolError as exc:
            raise _bad(f"malformed or badly signed answer receipt: {exc}") from None
        if envelope_r.signer not in record.executors or receipt.requester != requester:
            raise _bad("an answer receipt from someone else than an executor, or for "
                       "another requester")
        i = record.executors.index(envelope_r.signer)
        if receipt.digest != record.answers[i] or i in receipted:
            raise _bad(f"{envelope_r.signer[-8:]}'s receipt is not for its recorded answer")
        receipted.add(i)
    if any(a and i not in receipted for i, a in enumerate(record.answers)):
        raise _bad("an answer in the record has no receipt from its executor")
    record_digest = digest(ev.record)
    commits: dict[str, VoteCommit] = {}
    for raw in ev.commits:
        c = _open(raw, VoteCommit, "commit")
        if c.judge not in record.judges:
            raise _bad(f"a commit from {c.judge[-8:]}, who is not a judge of this duel")
        if c.judge in commits:
            raise _bad(f"two commits from {c.judge[-8:]}")
        if (c.network, c.duel_id, c.requester, c.record) != (
                network, duel_id, requester, record_digest):
            raise _bad(f"{c.judge[-8:]}'s commit is for another duel or record")
        commits[c.judge] = c
    votes: dict[str, str] = {}
    for raw in ev.reveals:
        r = _open(raw, VoteReveal, "reveal")
        c_ = commits.get(r.judge)
        if c_ is None:
            raise _bad(f"a reveal from {r.judge[-8:]} without a commit")
        if r.judge in votes:
            raise _bad(f"two reveals from {r.judge[-8:]}")
        if (r.network, r.duel_id, r.requester) != (network, duel_id, requester):
            raise _bad(f"{r.judge[-8:]}'s reveal is for another duel")
        if r.verdict not in VERDICTS:
            raise _bad(f"{r.judge[-8:]} revealed {r.verdict!r}; allowed: {', '.join(VERDICTS)}")
        if commitment(duel_id, r.judge, r.verdict, r.salt) != c_.commitment:
            raise _bad(f"{r.judge[-8:]}'s reveal does not open its commitment")
        votes[r.judge] = r.verdict
    return tally(record, votes, committed=commits)


def _open(raw: bytes, cls: type[_V], what: str) -> _V:
    try:
        envelope = decode(raw, expect=Signed)
        msg: _V = unseal(envelope, expect=cls)
    except ProtocolError as exc:
        raise _bad(f"malformed or badly signed {what}: {exc}") from None
    if envelope.signer != msg.judge:
        raise _bad(f"a {what} for {msg.judge[-8:]} signed by {envelope.signer[-8:]}")
    return msg
