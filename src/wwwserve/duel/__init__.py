"""Duel-and-judge: pairwise quality evaluation that moves credit toward better providers.

- :mod:`.ratings`: Bradley–Terry ratings of peers from duel outcomes;
- :mod:`.service`: the protocol itself (a node's requester and judge roles).

Its sans-IO parts live lower, where the ledger can use them too: the signed duel record,
vote commits and reveals, and the tally every ledger replica re-derives in
:mod:`wwwserve.evidence`; the judge prompt and verdict parser in :mod:`wwwserve.judging`.
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
