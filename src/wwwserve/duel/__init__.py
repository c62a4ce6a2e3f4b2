"""Duel-and-judge: pairwise quality evaluation that moves credit toward better providers.

- :mod:`.evidence`: the signed duel record, vote commits and reveals, and the tally every
  ledger replica re-derives (sans-IO);
- :mod:`.judge`: the judge prompt, the verdict parser, simulated answer quality and its
  calibration;
- :mod:`.ratings`: Bradley–Terry ratings of peers from duel outcomes;
- :mod:`.service`: the protocol itself (a node's requester and judge roles).
"""

from .evidence import DuelEvidence, DuelRecord, Outcome, VoteCommit, VoteReveal, tally
from .judge import QualityModel, judge_messages, parse_verdict

__all__ = [
    "DuelEvidence",
    "DuelRecord",
    "Outcome",
    "QualityModel",
    "VoteCommit",
    "VoteReveal",
    "judge_messages",
    "parse_verdict",
    "tally",
]
