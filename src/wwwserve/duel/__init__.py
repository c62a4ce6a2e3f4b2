"""Duel-and-judge: pairwise quality evaluation that moves credit toward better providers.

- ``ratings``: Bradley–Terry ratings of peers from duel outcomes;
- ``service``: the protocol itself (a node's requester and judge roles).

Its sans-IO parts live lower, where the ledger can use them too: the signed duel record,
vote commits and reveals, and the tally every ledger replica re-derives in
``wwwserve.evidence``; the judge prompt and verdict parser in ``wwwserve.judging``.
"""

from ..evidence import DuelEvidence, DuelRecord, Outcome, VoteCommit, VoteReveal, tally
from ..judging import judge_messages, parse_verdict

__all__ = [
    "DuelEvidence",
    "DuelRecord",
    "Outcome",
    "VoteCommit",
    "VoteReveal",
    "judge_messages",
    "parse_verdict",
    "tally",
]
