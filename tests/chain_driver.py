"""Drive a sans-IO ledger chain in tests: proposers propose their slots, voters vote."""

from __future__ import annotations

import weakref

from wwwserve.identity import Identity
from wwwserve.ledger import Block, Chain


class Voters:
    """Each identity's last vote, kept across chains as a node keeps its VoteRecord."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[int, int]] = {}

    def grow(self, chain: Chain, slots: range, proposers: list[Identity],
             voters: list[Identity]) -> list[Block]:
        """For each slot, whoever of ``proposers`` draws it proposes; then ``voters`` vote."""
        made = []
        for slot in slots:
            for ident in proposers:
                block = chain.propose(ident, slot)
                if block is not None:
                    made.append(block)
            for ident in voters:
                vote = chain.vote(ident, after=self.last.get(ident.peer_id, (0, 0)))
                if vote is not None:
                    self.last[ident.peer_id] = (vote.vote.source_height,
                                                vote.vote.target_height)
        return made


_VOTERS: weakref.WeakKeyDictionary[Chain, Voters] = weakref.WeakKeyDictionary()


def run_slots(chain: Chain, slots: range, ids: list[Identity]) -> list[Block]:
    """Let whoever is each slot's proposer propose, and every one of ``ids`` vote (each
    chain remembers its voters' last votes)."""
    return _VOTERS.setdefault(chain, Voters()).grow(chain, slots, ids, ids)
