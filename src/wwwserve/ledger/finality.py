"""Finality by stake-weighted votes on checkpoints (after Casper FFG, Buterin & Griffith 2017).

Why votes: a rule that counts the proposers of the blocks on top of a block as its
supporters is not safe, because an honest proposer that reorganises onto another branch
then supports both. Here support is explicit and exclusive:

- every ``interval``-th block height is a **checkpoint**; the genesis is the first;
- a staked account signs a ``Vote`` for a *link* from a **source** checkpoint (the
  highest justified one it knows) to a **target** checkpoint (the newest on its best chain),
  at most one vote per target height, and never a vote whose source is lower than that of
  an earlier vote of its own (so no two of its votes *surround* each other);
- votes travel by gossip and are **included in blocks**, so whether a checkpoint is
  justified or final is a function of a branch's own contents: every replica, a joiner
  replaying the chain from peers and a node reloading its block file all derive the same;
- a link is a **supermajority** once its voters hold more than two thirds of the stake
  recorded at its source checkpoint; its target is then **justified**, and if the target
  is the source's very next checkpoint, the source is **final**.

Two conflicting final checkpoints need more than a third of the stake to have voted twice
for one height or in surrounding pairs: behaviour no honest node shows, and which leaves
signed evidence (``slashable()``). A partition holding less than two thirds of the stake
never finalizes, so after the heal it can still reorganise onto the other side.

``FinalityState`` is immutable: each block's state derives from its parent's by
``FinalityState.advance()``, so a reorganisation needs no undo.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..errors import InvalidBlockError, InvalidVoteError, ProtocolError
from ..identity import Identity
from ..wire import Message, Signed, decode, encode, message, seal, unseal

__all__ = ["Checkpoint", "FinalityState", "InvalidVoteError", "SignedVote", "Vote",
           "decode_vote", "sign_vote", "slashable"]


@message("finality-vote", 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class Vote(Message):
    """``voter`` supports the link from checkpoint ``source`` to checkpoint ``target``."""

    network: str
    voter: str
    source_height: int
    source: bytes
    target_height: int
    target: bytes


@dataclass(frozen=True, slots=True)
class SignedVote:
    """A verified vote with its envelope bytes (what blocks carry)."""

    vote: Vote
    envelope: bytes


def sign_vote(vote: Vote, identity: Identity) -> SignedVote:
    """Sign ``vote`` as ``identity`` (its voter)."""
    if vote.voter != identity.peer_id:
        raise InvalidVoteError(f"a vote of {vote.voter[-8:]} signed by {identity.peer_id[-8:]}")
    return SignedVote(vote, encode(seal(vote, identity)))


def decode_vote(envelope: bytes) -> SignedVote:
    """Decode and verify a vote envelope; raises ``InvalidVoteError``."""
    try:
        signed = decode(envelope, expect=Signed)
        vote = unseal(signed, expect=Vote)
    except ProtocolError as exc:
        raise InvalidVoteError(f"malformed or badly signed vote: {exc}") from None
    if signed.signer != vote.voter:
        raise InvalidVoteError(f"vote of {vote.voter[-8:]} signed by {signed.signer[-8:]}")
    if not 0 <= vote.source_height < vote.target_height:
        raise InvalidVoteError(
            f"source height {vote.source_height} not below target {vote.target_height}")
    return SignedVote(vote, envelope)


def slashable(a: Vote, b: Vote) -> bool:
    """True if one voter's two votes break the rules: two targets at one height, or one
    link surrounding the other."""
    if a.voter != b.voter or a == b:
        return False
    if a.target_height == b.target_height:
        return True
    return (a.source_height < b.source_height and b.target_height < a.target_height) or \
        (b.source_height < a.source_height and a.target_height < b.target_height)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A checkpoint block by height and id."""

    height: int
    id: bytes


@dataclass(frozen=True, slots=True)
class FinalityState:
    """What a branch's votes, up to one of its blocks, justify and finalize."""

    #: justified checkpoints at or above ``finalized``: id -> height
    justified: Mapping[bytes, int]
    last_justified: Checkpoint
    finalized: Checkpoint
    #: stake that voted for each link (source id, target id) not yet resolved
    tally: Mapping[tuple[bytes, bytes], int]
    #: (voter, target height) of every vote included above ``finalized``
    voted: frozenset[tuple[str, int]]

    @classmethod
    def genesis(cls, genesis_id: bytes) -> FinalityState:
        """The state at the genesis: it is justified and final."""
        root = Checkpoint(0, genesis_id)
        return cls({genesis_id: 0}, root, root, {}, frozenset())

    def check(self, vote: Vote, *, height: int, interval: int,
              ancestor: Callable[[int], bytes | None],
              weights: Callable[[bytes], Mapping[str, int] | None]) -> int:
        """The weight ``vote`` adds if a block at ``height`` on this branch includes it;
        raises ``InvalidVoteError`` if it may not."""
        if vote.target_height % interval or not 0 < vote.target_height < height:
            raise InvalidVoteError(f"target height {vote.target_height} is not a checkpoint "
                                   f"below {height}")
        if self.justified.get(vote.source) != vote.source_height:
            raise InvalidVoteError(f"source at {vote.source_height} is not justified here")
        if ancestor(vote.target_height) != vote.target:
            raise InvalidVoteError(f"target at {vote.target_height} is not on this branch")
        if (vote.voter, vote.target_height) in self.voted:
            raise InvalidVoteError(
                f"{vote.voter[-8:]} already voted for height {vote.target_height}")
        table = weights(vote.source)
        weight = table.get(vote.voter, 0) if table is not None else 0
        if weight <= 0:
            raise InvalidVoteError(f"{vote.voter[-8:]} held no stake at the source")
        return weight

    def advance(self, votes: Iterable[Vote], *, height: int, interval: int,
                ancestor: Callable[[int], bytes | None],
                weights: Callable[[bytes], Mapping[str, int] | None]) -> FinalityState:
        """The state after a block at ``height`` on this branch with ``votes``.

        ``ancestor(h)`` is the branch's block id at height ``h`` (below ``height``);
        ``weights(id)`` the stake table recorded at a checkpoint. Raises
        ``InvalidBlockError`` if any vote may not be included.
        """
        votes = list(votes)
        if not votes:
            return self
        justified = dict(self.justified)
        tally = dict(self.tally)
        voted = set(self.voted)
        last, final = self.last_justified, self.finalized
        state = self
        for vote in votes:
            try:
                weight = state.check(vote, height=height, interval=interval,
                                     ancestor=ancestor, weights=weights)
            except InvalidVoteError as exc:
                raise InvalidBlockError(f"block {height}: {exc}") from None
            voted.add((vote.voter, vote.target_height))
            link = (vote.source, vote.target)
            tally[link] = tally.get(link, 0) + weight
            table = weights(vote.source)
            assert table is not None  # check() found the voter in it
            if 3 * tally[link] > 2 * sum(v for v in table.values() if v > 0) \
                    and vote.target not in justified:
                justified[vote.target] = vote.target_height
                if vote.target_height > last.height:
                    last = Checkpoint(vote.target_height, vote.target)
                if vote.target_height == vote.source_height + interval \
                        and vote.source_height > final.height:
                    final = Checkpoint(vote.source_height, vote.source)
            state = FinalityState(justified, last, final, tally, frozenset(voted))
        if final != self.finalized:  # forget what can no longer matter
            justified = {b: h for b, h in justified.items() if h >= final.height}
            tally = {link: w for link, w in tally.items()
                     if justified.get(link[0], -1) >= final.height}
            voted = {(v, h) for v, h in voted if h > final.height}
        return FinalityState(justified, last, final, tally, frozenset(voted))
