"""The chain: a tree of blocks, fork choice, finality, reorganisation and the pending pool.

One job: the replicated chain's state machine (its parts share one block tree and one state,
and are kept together so every rule that moves the tip reads in one place).

``Chain`` is sans-IO: blocks and transactions go in (``Chain.add_block()``,
``Chain.add_tx()``), a block comes out when this node may propose (``Chain.propose()``);
gossip, sync and the clock live elsewhere.

**Fork choice** (as in Casper FFG): the chain whose votes justify the highest checkpoint
wins, then the longest (greatest height), then the tip with the smaller block id, so every
node picks the same one. Without the first rule, nodes whose votes came from a justified
checkpoint that a longer branch lacks could never vote on that branch (their next vote
would surround the last), and finality would stall. A block is validated in full (proposer
lottery, transactions, votes, state root) when it becomes part of the best chain; a
reorganisation that meets an invalid block is undone and the block (and its descendants)
rejected.

**Finality**: stakers vote for checkpoints (every ``finality_depth``-th height) and
blocks carry the votes; a checkpoint is final once more than two thirds of the stake voted
for it and then for its next checkpoint (``finality``, after Casper FFG). The chain
never reorganises below its last final block. A partition holding less than two thirds of
the stake never finalizes, so after the heal it can still reorganise onto the other side's
longer chain; two conflicting chains cannot both finalize unless a third of the stake
votes twice.

**Equivocation**: a second block one proposer signed for a slot is kept like any other
(at most ``MAX_SLOT_VERSIONS`` per proposer and slot), so that a node that saw one
first can still follow the branch the others built on the other; the pair becomes
evidence (``slashing``, also for conflicting finality votes) that the next block this
node proposes carries, and applying it slashes the equivocator on chain.

**Storage**: only blocks that were applied to the best chain (leader, transactions,
votes, evidence and state root checked) reach the block file (``on_block``). Side blocks
and orphans live in memory, bounded in number and in bytes, and only if their proposer
holds stake somewhere this node can see (the tip or a kept checkpoint): a key without
stake cannot make a node store anything.

**Pool**: pending transactions that can apply in turn: the signer holds credit, the nonce
is within ``pool_per_account`` of its next one, and its pending spending stays within its
balance. At most ``pool_per_account`` per account and ``pool_size`` in all (when full, the
account with the most pending makes room for one with fewer), each expiring
``pool_expiry`` seconds after it arrived. A transaction that turns out not to apply when
its turn comes is dropped by the proposer, and its signer replaces it (or fills a gap in
its nonces) with a ``Skip``, which takes a pending nonce's place: one invalid
transaction never holds up the account's later ones. Transactions of blocks undone by a
reorganisation go back to the pool, so each is applied exactly once: nonces make a second
application invalid.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..errors import InvalidBlockError, InvalidTransactionError
from ..evidence import DuelRecord, draw_judges
from ..identity import Identity
from .block import Block, Genesis, block_id, block_signature_ok, leader, make_block
from .finality import (
    FinalityState,
    InvalidVoteError,
    SignedVote,
    Vote,
    decode_vote,
    sign_vote,
    slashable,
)
from .slashing import Offence, block_equivocation, check_evidence, vote_equivocation
from .state import LedgerState, Undo
from .tx import DuelSettlement, JoinGrant, Payment, SignedTx, Skip, Stake, decode_tx

__all__ = ["AddResult", "Chain"]

logger = logging.getLogger(__name__)

#: seconds a peer's clock may run ahead of ours before its blocks count as from the future
MAX_CLOCK_DRIFT = 8.0
#: how far above our tip a vote's target may be (a node behind the others still takes
#: their votes; a vote for a far future height is junk)
VOTE_HORIZON = 64
#: pending votes kept per voter (an honest one has a few: one per checkpoint not yet final)
VOTES_PER_VOTER = 32
#: checkpoints below the final one whose stake tables are kept (votes from older sources
#: are refused: a branch that far behind in finality cannot win anyway)
STAKE_TABLES_BELOW_FINAL = 256
#: blocks one proposer may have in the tree for one slot: the first and one equivocation
#: (a third proves nothing the pair does not)
MAX_SLOT_VERSIONS = 2
#: evidence waiting to be included in a block, at most
MAX_EVIDENCE_POOL = 256
#: evidence items one block may carry
MAX_BLOCK_EVIDENCE = 16
#: blocks between a duel's checkpoint and the block settling it, at most (the stake
#: tables of older checkpoints may be gone, and a requester must not pick among many)
MAX_DUEL_AGE = 512
#: judges a judged duel has at least (or every staker that may judge, if fewer)
MIN_JUDGES = 2


class AddResult(enum.Enum):
    """What ``Chain.add_block()`` did with a block."""

    EXTENDED = "extended"  #: it became the new tip
    REORGANIZED = "reorganized"  #: the chain switched to its branch
    SIDE = "side"  #: kept on a side branch
    DUPLICATE = "duplicate"  #: already known
    ORPHAN = "orphan"  #: its parent is unknown (kept, bounded, until the parent comes)


def _size(block: Block) -> int:
    """Bytes a block holds (its contents and a header's worth)."""
    return 256 + sum(map(len, block.txs)) + sum(map(len, block.votes)) + \
        sum(map(len, block.evidence))


def _spend(stx: SignedTx) -> int:
    """Most micro-credits ``stx`` can take from its signer's balance."""
    tx = stx.tx
    if isinstance(tx, Payment | Stake):
        return tx.amount
    if isinstance(tx, DuelSettlement):
        return tx.reward
    return 0


@dataclass(slots=True)
class _Entry:
    block: Block | None  # None for the genesis
    id: bytes
    parent: bytes
    height: int
    slot: int
    txs: tuple[SignedTx, ...]
    votes: tuple[Vote, ...] = ()
    #: what the branch's votes finalize, up to this block: exact once it was applied, an
    #: estimate before (see Chain._preview)
    fin: FinalityState | None = None
    #: True while ``fin`` may fall short (votes that could not be checked before applying)
    uncertain: bool = False
    #: the equivocations its evidence proves
    offences: tuple[Offence, ...] = ()
    #: bytes of its contents (what side blocks are bounded by)
    size: int = 0
    #: handed to ``on_block`` (the block file) already
    stored: bool = False


class Chain:
    """One node's replica of the ledger (see the module docs)."""

    def __init__(self, genesis: Genesis, *, max_block_txs: int = 1000,
                 pool_size: int = 50_000, pool_per_account: int = 64,
                 pool_expiry: float = 600.0, max_side_blocks: int = 1024,
                 max_side_bytes: int = 64 * 1024 * 1024,
                 max_orphans: int = 256, max_orphan_bytes: int = 16 * 1024 * 1024,
                 max_block_votes: int = 256, max_votes: int = 4096,
                 on_block: Callable[[Block], None] | None = None) -> None:
        self.genesis = genesis
        self._genesis_stakes = {a.account: a.stake for a in genesis.allocations}
        self.network = genesis.network
        self.state: LedgerState = genesis.state()
        self.max_block_txs = max_block_txs
        self.pool_size = pool_size
        self.pool_per_account = pool_per_account
        self.pool_expiry = pool_expiry
        self.max_side_blocks = max_side_blocks
        self.max_side_bytes = max_side_bytes
        self.max_orphans = max_orphans
        self.max_orphan_bytes = max_orphan_bytes
        #: called with every block once it was applied to the best chain (the block file)
        self.on_block = on_block
        #: how far ahead of our clock a block's slot may be: clocks differ between nodes
        #: (a node whose clock lags would refuse every fresh block of the others)
        self._future_slots = max(1, math.ceil(MAX_CLOCK_DRIFT / genesis.slot_length))
        self.max_block_votes = max_block_votes
        self.max_votes = max_votes
        root = _Entry(None, genesis.id, b"", 0, -1, (), (), FinalityState.genesis(genesis.id))
        self._entries: dict[bytes, _Entry] = {genesis.id: root}
        self._canonical: list[bytes] = [genesis.id]
        self._undos: list[Undo] = [Undo()]
        #: the blocks in the tree by (proposer, slot): one, or two for an equivocation
        self._by_slot: dict[tuple[str, int], list[bytes]] = {}
        self._orphans: OrderedDict[bytes, Block] = OrderedDict()
        self._orphan_bytes = 0
        #: ids of the blocks in the tree that are not on the best chain
        self._side: set[bytes] = set()
        self._invalid: OrderedDict[bytes, None] = OrderedDict()
        self.finalized_height = 0
        #: pending transactions: id -> (transaction, expiry time)
        self.pool: dict[bytes, tuple[SignedTx, float]] = {}
        #: the pool indexed by signer and nonce (id of the pending transaction)
        self._pending: dict[str, dict[int, bytes]] = {}
        #: pairs of blocks one proposer signed for the same slot (the latest 256)
        self.equivocations: list[tuple[Block, Block]] = []
        #: pending finality votes by (voter, target height)
        self.votes: dict[tuple[str, int], SignedVote] = {}
        #: pairs of votes of one voter that break the voting rules (the latest 256)
        self.vote_equivocations: list[tuple[Vote, Vote]] = []
        #: evidence of equivocations seen here, by offence, for the next block we propose
        self.evidence: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        #: the stake table at each checkpoint applied here, from well below the final one
        #: up (the weights of votes whose source it is)
        self._checkpoint_stakes: dict[bytes, tuple[int, dict[str, int]]] = {
            genesis.id: (0, dict(self._lottery_stakes()))}
        self.stats: dict[str, int] = {}
        self._now = 0.0
        self.state.judge_check = self._check_judges

    # ---- reading ------------------------------------------------------------------------
    @property
    def height(self) -> int:
        """Height of the tip."""
        return len(self._canonical) - 1

    @property
    def tip(self) -> bytes:
        """Id of the tip block."""
        return self._canonical[-1]

    @property
    def tip_slot(self) -> int:
        """Slot of the tip block (-1 at genesis)."""
        return self._entries[self.tip].slot

    @property
    def finalized(self) -> bytes:
        """Id of the last final block."""
        return self._canonical[self.finalized_height]

    @property
    def finality(self) -> FinalityState:
        """What the best chain's votes justify and finalize, at its tip."""
        fin = self._entries[self.tip].fin
        assert fin is not None  # every canonical entry was applied
        return fin

    def canonical_id(self, height: int) -> bytes | None:
        """Id of the best chain's block at ``height``."""
        return self._canonical[height] if 0 <= height <= self.height else None

    def block(self, bid: bytes) -> Block | None:
        """A known block by id (None for unknown ids and the genesis)."""
        entry = self._entries.get(bid)
        return entry.block if entry else None

    def canonical_blocks(self, start: int, limit: int) -> list[Block]:
        """Up to ``limit`` blocks of the best chain from height ``start`` (>= 1)."""
        out = []
        for bid in self._canonical[max(1, start):max(1, start) + max(0, limit)]:
            block = self._entries[bid].block
            assert block is not None
            out.append(block)
        return out

    def knows(self, bid: bytes) -> bool:
        """True if the block is in the tree (canonical or side)."""
        return bid in self._entries

    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

    # ---- transactions -------------------------------------------------------------------
    def add_tx(self, envelope: bytes | SignedTx, now: float) -> SignedTx:
        """Verify a transaction and put it in the pool; raises if it cannot be included."""
        self._now = max(self._now, now)
        stx = envelope if isinstance(envelope, SignedTx) else decode_tx(envelope)
        if stx.id in self.pool:
            return stx
        self.admissible(stx)
        signer = stx.signer
        taken = self._pending.get(signer, {}).get(stx.tx.nonce)
        if taken is not None:
            if not isinstance(stx.tx, Skip) or isinstance(self.pool[taken][0].tx, Skip):
                raise InvalidTransactionError(f"nonce {stx.tx.nonce} is already pending")
            self._pool_remove(taken)  # the signer gives up a transaction that cannot apply
        spend = _spend(stx) + sum(_spend(p) for p in self.pending(signer))
        if spend > self.state.balance(signer):
            raise InvalidTransactionError(
                f"{signer[-8:]}'s pending transactions would spend {spend}, more than its "
                f"balance {self.state.balance(signer)}")
        if len(self.pool) >= self.pool_size:
            self.expire(now)
            if len(self.pool) >= self.pool_size:
                self._make_room(signer)
        self._pool_add(stx, now + self.pool_expiry)
        return stx

    def admissible(self, stx: SignedTx) -> None:
        """The pool's checks that need no other pending transaction (also the tx topic's
        gossip validator): this network, a signer that holds credit (or claims a join
        grant it may claim), a nonce inside the window. Raises if one fails."""
        tx, signer = stx.tx, stx.signer
        if tx.network != self.network:
            raise InvalidTransactionError(f"transaction for network {tx.network!r}")
        next_nonce = self.state.nonce(signer)
        if tx.nonce < next_nonce:
            raise InvalidTransactionError(f"nonce {tx.nonce} is already used")
        if tx.nonce >= next_nonce + self.pool_per_account:
            raise InvalidTransactionError(
                f"nonce {tx.nonce} is too far ahead (next {next_nonce})")
        state = self.state
        funded = state.balance(signer) or state.stake(signer) or state.unbonding_total(signer)
        claim = (isinstance(tx, JoinGrant) and tx.nonce == 0 and state.rules.join_grant > 0
                 and signer not in state.granted)
        if not (funded or claim):
            raise InvalidTransactionError(f"{signer[-8:]} holds no credit")

    def spendable(self, account: str) -> int:
        """``account``'s balance on the tip less what its pending transactions may spend."""
        return self.state.balance(account) - sum(_spend(p) for p in self.pending(account))

    def pending(self, account: str) -> list[SignedTx]:
        """``account``'s pending transactions, in nonce order."""
        mine = self._pending.get(account, {})
        return [self.pool[mine[n]][0] for n in sorted(mine)]

    def _pool_add(self, stx: SignedTx, expiry: float) -> None:
        if stx.id in self.pool or stx.tx.nonce in self._pending.get(stx.signer, {}):
            return
        self.pool[stx.id] = (stx, expiry)
        self._pending.setdefault(stx.signer, {})[stx.tx.nonce] = stx.id

    def _pool_remove(self, tid: bytes) -> None:
        stx, _ = self.pool.pop(tid)
        mine = self._pending[stx.signer]
        del mine[stx.tx.nonce]
        if not mine:
            del self._pending[stx.signer]

    def _make_room(self, signer: str) -> None:
        """Fair shares of a full pool: the account with the most pending transactions
        gives up its last one, if it has more than ``signer`` would; else raise."""
        fullest = max(self._pending, key=lambda a: (len(self._pending[a]), a))
        if len(self._pending[fullest]) <= len(self._pending.get(signer, {})) + 1:
            raise InvalidTransactionError("the pending pool is full")
        mine = self._pending[fullest]
        self._pool_remove(mine[max(mine)])
        self._count("txs_evicted")

    def expire(self, now: float) -> int:
        """Drop pending transactions past their expiry; returns how many."""
        self._now = max(self._now, now)
        old = [tid for tid, (_, exp) in self.pool.items() if exp <= now]
        for tid in old:
            self._pool_remove(tid)
        return len(old)

    def _prune_pool(self) -> None:
        for signer, mine in list(self._pending.items()):
            used = self.state.nonce(signer)
            for nonce in [n for n in mine if n < used]:
                self._pool_remove(mine[nonce])

    def applies(self, stx: SignedTx) -> bool:
        """Whether ``stx`` would apply on the tip now (its nonce the signer's next)."""
        undo = self.state.begin_block(self.height + 1)
        try:
            undo.extend(self.state.apply(stx, self.height + 1))
        except InvalidTransactionError:
            return False
        finally:
            self.state.revert(undo)
        return True

    def _select(self, height: int) -> list[SignedTx]:
        """Pending transactions that apply on the tip, in nonce order per account; one
        that cannot apply when its turn comes leaves the pool."""
        chosen: list[SignedTx] = []
        undo = self.state.begin_block(height)
        try:
            for signer in sorted(self._pending):
                for stx in self.pending(signer):
                    if len(chosen) >= self.max_block_txs:
                        break
                    try:
                        undo.extend(self.state.apply(stx, height))
                    except InvalidTransactionError:
                        if stx.tx.nonce == self.state.nonce(signer):
                            self._pool_remove(stx.id)
                            self._count("txs_dropped_inapplicable")
                        break  # later nonces of this signer cannot apply either
                    chosen.append(stx)
        finally:
            self.state.revert(undo)
        return chosen

    # ---- proposing ----------------------------------------------------------------------
    def _lottery_stakes(self) -> Mapping[str, int]:
        """The weights of the proposer lottery: the current stakes, or the genesis' if
        nobody stakes any more (penalties can take every stake at once: without this
        fallback no block could ever be proposed again, not even one restaking)."""
        if any(v > 0 for v in self.state.stakes.values()):
            return self.state.stakes
        return self._genesis_stakes

    def leader_of(self, slot: int) -> str | None:
        """Who may propose ``slot`` on top of the tip."""
        return leader(self.tip, slot, self._lottery_stakes())

    def propose(self, identity: Identity, slot: int) -> Block | None:
        """The block ``identity`` proposes for ``slot``, if it is that slot's proposer.

        The block is added to this chain before it is returned (for gossip).
        """
        if slot <= self.tip_slot or self.leader_of(slot) != identity.peer_id \
                or (identity.peer_id, slot) in self._by_slot:
            return None  # not ours, or we already signed a block for this slot elsewhere
        txs = self._select(self.height + 1)
        block = self.build_block(identity, slot, txs, evidence=self._select_evidence())
        self.add_block(block)
        return block

    def build_block(self, identity: Identity, slot: int, txs: list[SignedTx], *,
                    evidence: list[bytes] | None = None,
                    votes: list[SignedVote] | None = None) -> Block:
        """The block ``identity`` would sign for ``slot`` on the tip with these contents
        (valid if it is the slot's proposer and they apply), without adding it anywhere.
        ``propose()`` is what an honest node calls; tests build other blocks with it."""
        height = self.height + 1
        ev = evidence or []
        offences = [check_evidence(e, self.network) for e in ev]
        undo = self._apply_contents(txs, offences, height)
        root = self.state.root()
        self.state.revert(undo)
        return make_block(identity, network=self.network, height=height, parent=self.tip,
                          slot=slot, txs=txs, state_root=root,
                          votes=self._select_votes(height) if votes is None else votes,
                          evidence=ev)

    def _apply_contents(self, txs: Iterable[SignedTx], offences: Iterable[Offence],
                        height: int) -> Undo:
        """Apply a block's transactions, then its evidence, all or nothing."""
        undo = self.state.apply_all(txs, height)
        try:
            for offence in offences:
                undo.extend(self.state.slash(offence.offender, offence.key, height))
        except BaseException:
            self.state.revert(undo)
            raise
        return undo

    def _select_evidence(self) -> list[bytes]:
        """Evidence the next block may carry: what is not slashed on the tip yet."""
        out = []
        for key, data in list(self.evidence.items()):
            if key in self.state.slashed:
                continue
            out.append(data)
            if len(out) >= MAX_BLOCK_EVIDENCE:
                break
        return out

    def _note_evidence(self, offence_key: tuple[str, str, int], data: bytes) -> None:
        if offence_key in self.evidence:
            return
        self.evidence[offence_key] = data
        while len(self.evidence) > MAX_EVIDENCE_POOL:
            self.evidence.popitem(last=False)
        self._count(f"equivocations_{offence_key[0]}")
        logger.warning("%s equivocated (%s at %d): evidence kept for the chain",
                       offence_key[1][-8:], offence_key[0], offence_key[2])

    # ---- duel judges --------------------------------------------------------------------
    def judge_draw(self, requester: str, exclude: Iterable[str], k: int
                   ) -> tuple[int, tuple[str, ...]]:
        """(checkpoint height, judges) for a duel ``requester`` starts now: drawn at the
        best chain's latest checkpoint (see ``draw_judges()``)."""
        anchor = self.height // self.genesis.finality_depth * self.genesis.finality_depth
        bid = self._canonical[anchor]
        return anchor, draw_judges(bid, requester, self._checkpoint_stakes[bid][1],
                                   {requester, *exclude}, k)

    def record_problem(self, record: DuelRecord) -> str | None:
        """Why a judge must refuse ``record`` on this chain (its requester holds no stake,
        or its judges are not the ones drawn at its checkpoint), or None."""
        if self.state.stake(record.requester) <= 0:
            return f"the requester {record.requester[-8:]} holds no stake"
        try:
            self._check_judges(record, self.height + 1)
        except InvalidTransactionError as exc:
            return str(exc)
        return None

    def _check_judges(self, record: DuelRecord, height: int) -> None:
        """A judged duel settled at ``height``: its checkpoint is one of this branch's
        within ``MAX_DUEL_AGE`` blocks, and its judges are the ones drawn there."""
        anchor, depth = record.anchor, self.genesis.finality_depth
        if not 0 <= anchor < height or anchor % depth or height - anchor > MAX_DUEL_AGE:
            raise InvalidTransactionError(
                f"duel {record.duel_id!r}: its checkpoint {anchor} is not one of the "
                f"{MAX_DUEL_AGE} blocks before {height}")
        bid = self._canonical[anchor] if anchor < len(self._canonical) else None
        table = self._checkpoint_stakes.get(bid) if bid is not None else None
        if bid is None or table is None:
            raise InvalidTransactionError(
                f"duel {record.duel_id!r}: checkpoint {anchor} unknown on this branch")
        k = len(record.judges)
        expected = draw_judges(bid, record.requester, table[1],
                               {record.requester, *record.executors}, max(k, MIN_JUDGES))
        # the draw is sequential: fewer judges are a prefix of more
        if record.judges != expected[:k] or k < min(MIN_JUDGES, len(expected)):
            raise InvalidTransactionError(
                f"duel {record.duel_id!r}: its judges are not the ones drawn at "
                f"checkpoint {anchor}")

    # ---- finality votes -----------------------------------------------------------------
    def _ancestor(self, height: int) -> bytes | None:
        """The best chain's block id at ``height`` (the branch being extended)."""
        return self._canonical[height] if 0 <= height < len(self._canonical) else None

    def _weights(self, checkpoint: bytes) -> dict[str, int] | None:
        got = self._checkpoint_stakes.get(checkpoint)
        return got[1] if got is not None else None

    def _select_votes(self, height: int) -> list[SignedVote]:
        """Pending votes a block at ``height`` on the tip may include."""
        fin = self.finality
        chosen: list[SignedVote] = []
        for key in sorted(self.votes, key=lambda k: (k[1], k[0])):
            if len(chosen) >= self.max_block_votes:
                break
            if key in fin.voted or key[1] >= height:
                continue  # already on this branch, or not yet below the new block
            sv = self.votes[key]
            try:
                fin = fin.advance([sv.vote], height=height, interval=self.genesis.finality_depth,
                                  ancestor=self._ancestor, weights=self._weights)
            except InvalidBlockError:
                continue  # not (or no longer) valid on this branch
            chosen.append(sv)
        return chosen

    def vote(self, identity: Identity, *, after: tuple[int, int] = (0, 0)) -> SignedVote | None:
        """The vote ``identity`` should cast now, if any, and put it in the pending pool.

        ``after`` is (source height, target height) of its last vote: the new one's target
        is higher, its source no lower (so the two never conflict). The caller must record
        the new vote durably before it sends it anywhere.
        """
        interval = self.genesis.finality_depth
        target_height = self.height // interval * interval
        fin = self.finality
        source = fin.last_justified
        if target_height <= max(after[1], source.height) or source.height < after[0]:
            return None
        weights = self._weights(source.id)
        if weights is None or weights.get(identity.peer_id, 0) <= 0:
            return None
        target = self._canonical[target_height]
        sv = sign_vote(Vote(network=self.network, voter=identity.peer_id,
                            source_height=source.height, source=source.id,
                            target_height=target_height, target=target), identity)
        self.add_vote(sv)
        return sv

    def add_vote(self, envelope: bytes | SignedVote) -> SignedVote | None:
        """Verify a vote and keep it for the next blocks; None if it is too old to matter.

        Raises ``InvalidVoteError`` for a bad one; a vote that conflicts with another
        of the same voter is recorded in ``vote_equivocations`` and dropped.
        """
        sv = envelope if isinstance(envelope, SignedVote) else decode_vote(envelope)
        vote = sv.vote
        if vote.network != self.network:
            raise InvalidVoteError(f"vote for network {vote.network!r}")
        if vote.target_height <= self.finalized_height:
            return None
        if vote.target_height > self.height + VOTE_HORIZON:
            raise InvalidVoteError(f"target height {vote.target_height} is too far ahead of "
                                   f"our chain ({self.height})")
        # only stakers' votes can count: anyone else's would only crowd the pool
        table = self._weights(vote.source)
        if (table.get(vote.voter, 0) if table is not None
                else self.state.stake(vote.voter)) <= 0:
            raise InvalidVoteError(f"{vote.voter[-8:]} holds no stake")
        key = (vote.voter, vote.target_height)
        known = self.votes.get(key)
        if known is not None and known.vote == vote:
            return known
        mine_signed = [v for v in self.votes.values() if v.vote.voter == vote.voter]
        mine = [v.vote for v in mine_signed]
        for other_signed in mine_signed:
            other = other_signed.vote
            if slashable(other, vote):
                self.vote_equivocations.append((other, vote))
                del self.vote_equivocations[:-256]
                self._count("vote_equivocations")
                self._note_evidence(("vote", vote.voter,
                                     min(vote.target_height, other.target_height)),
                                    vote_equivocation(other_signed, sv))
                raise InvalidVoteError(f"{vote.voter[-8:]} voted twice or around a vote")
        if len(mine) >= VOTES_PER_VOTER:  # its oldest target matters least
            del self.votes[(vote.voter, min(v.target_height for v in mine))]
        if len(self.votes) >= self.max_votes:  # the oldest targets matter least
            del self.votes[min(self.votes, key=lambda k: (k[1], k[0]))]
        self.votes[key] = sv
        return sv

    # ---- blocks -------------------------------------------------------------------------
    def add_block(self, block: Block, *, current_slot: int | None = None,
                  from_disk: bool = False) -> AddResult:
        """Take a block from the network or the disk (see the module docs).

        Raises ``InvalidBlockError`` for a block that breaks a rule; with
        ``current_slot``, blocks from future slots are rejected too. ``from_disk``: the
        block comes from this node's own block file (it is not handed to ``on_block``
        again).
        """
        bid = block_id(block)
        if bid in self._entries or bid in self._orphans:
            return AddResult.DUPLICATE
        if bid in self._invalid:
            raise InvalidBlockError("a block already rejected")
        txs, votes, offences = self.check_alone(block, current_slot)
        parent = self._entries.get(block.parent)
        if parent is None:
            self._orphans[bid] = block
            self._orphan_bytes += _size(block)
            while self._orphans and (len(self._orphans) > self.max_orphans
                                     or self._orphan_bytes > self.max_orphan_bytes):
                _, dropped = self._orphans.popitem(last=False)
                self._orphan_bytes -= _size(dropped)
            self._count("orphans")
            return AddResult.ORPHAN
        result = self._attach(block, bid, parent, txs, votes, offences, from_disk)
        self._adopt_orphans(bid)
        return result

    def check_alone(self, block: Block, current_slot: int | None = None
                    ) -> tuple[tuple[SignedTx, ...], tuple[Vote, ...], tuple[Offence, ...]]:
        """The checks that need no state but the stake tables kept here (network, a
        proposer that holds stake somewhere this node can see, signature, sizes,
        transactions, votes, evidence); returns the verified transactions, votes and
        offences or raises ``InvalidBlockError``. (Also the block topic's gossip
        validator: what fails here is not relayed.)"""
        if block.network != self.network:
            raise InvalidBlockError(f"block of network {block.network!r}")
        if block.height < 1 or block.slot < 0:
            raise InvalidBlockError("height and slot must be positive")
        if current_slot is not None and block.slot > current_slot + self._future_slots:
            raise InvalidBlockError(f"block for slot {block.slot}, now is {current_slot}")
        if len(block.txs) > self.max_block_txs:
            raise InvalidBlockError(f"{len(block.txs)} transactions; at most "
                                    f"{self.max_block_txs}")
        if len(block.votes) > self.max_block_votes:
            raise InvalidBlockError(f"{len(block.votes)} votes; at most "
                                    f"{self.max_block_votes}")
        if len(block.evidence) > MAX_BLOCK_EVIDENCE:
            raise InvalidBlockError(f"{len(block.evidence)} pieces of evidence; at most "
                                    f"{MAX_BLOCK_EVIDENCE}")
        if not self.may_propose(block.proposer):
            raise InvalidBlockError(f"proposer {block.proposer[-8:]} holds no stake")
        if not block_signature_ok(block):
            raise InvalidBlockError(f"bad signature by proposer {block.proposer[-8:]}")
        try:
            txs = tuple(decode_tx(t) for t in block.txs)
        except InvalidTransactionError as exc:
            raise InvalidBlockError(f"bad transaction: {exc}") from None
        try:
            votes = tuple(decode_vote(v).vote for v in block.votes)
        except InvalidVoteError as exc:
            raise InvalidBlockError(f"bad vote: {exc}") from None
        if any(v.network != self.network for v in votes):
            raise InvalidBlockError("a vote of another network")
        offences = tuple(check_evidence(e, self.network) for e in block.evidence)
        if len({o.key for o in offences}) != len(offences):
            raise InvalidBlockError("the same offence twice in one block")
        return txs, votes, offences

    def may_propose(self, account: str) -> bool:
        """Whether ``account`` holds stake anywhere this node can check a block against:
        the tip, a kept checkpoint's stake table, or the genesis. (A block of anybody else
        can never be valid, so it is neither stored nor relayed.)"""
        if self.state.stake(account) > 0 or self._genesis_stakes.get(account, 0) > 0:
            return True
        return any(table.get(account, 0) > 0 for _, table in self._checkpoint_stakes.values())

    def _attach(self, block: Block, bid: bytes, parent: _Entry, txs: tuple[SignedTx, ...],
                votes: tuple[Vote, ...], offences: tuple[Offence, ...],
                from_disk: bool) -> AddResult:
        if block.height != parent.height + 1:
            raise InvalidBlockError(f"height {block.height} on a parent at {parent.height}")
        if block.slot <= parent.slot:
            raise InvalidBlockError(f"slot {block.slot} not after the parent's {parent.slot}")
        fork = self._fork_height(parent)
        if fork < self.finalized_height:
            raise InvalidBlockError(
                f"forks at height {fork}, below the final height {self.finalized_height}")
        slot_key = (block.proposer, block.slot)
        versions = self._by_slot.get(slot_key, [])
        if versions:
            if len(versions) >= MAX_SLOT_VERSIONS:
                self._count("equivocations_dropped")
                raise InvalidBlockError(f"proposer {block.proposer[-8:]} signed more than "
                                        f"{MAX_SLOT_VERSIONS} blocks for slot {block.slot}")
            first = self._entries[versions[0]].block
            assert first is not None  # the genesis has no proposer
            self.equivocations.append((first, block))
            del self.equivocations[:-256]
            self._note_evidence(("block", block.proposer, block.slot),
                                block_equivocation(first, block))
        entry = _Entry(block, bid, block.parent, block.height, block.slot, txs, votes,
                       offences=offences, size=_size(block), stored=from_disk)
        entry.fin, entry.uncertain = self._preview(entry, parent)
        self._entries[bid] = entry
        self._by_slot.setdefault(slot_key, []).append(bid)
        if self._better(entry):
            if parent.id == self.tip:
                try:
                    self._apply(entry)
                except InvalidBlockError:
                    self._reject(bid)
                    raise
                self._after_change()
                return AddResult.EXTENDED
            if self._reorganize(entry):
                return AddResult.REORGANIZED
        self._side.add(bid)
        self._trim_side_blocks()
        return AddResult.SIDE

    def _stored(self, entry: _Entry) -> None:
        """Hand an applied block to ``on_block`` (the block file), once."""
        if not entry.stored and entry.block is not None:
            entry.stored = True
            if self.on_block is not None:
                self.on_block(entry.block)

    def _preview(self, entry: _Entry, parent: _Entry) -> tuple[FinalityState, bool]:
        """What ``entry``'s branch justifies, as far as can be told before applying it, and
        whether that may fall short: its votes counted along its own branch, or, if they
        cannot be checked yet (the stake table of a checkpoint this node never applied), the
        parent's, a lower bound. ``_apply()`` decides for good."""
        assert parent.fin is not None  # every entry gets one when it is attached
        try:
            return parent.fin.advance(entry.votes, height=entry.height,
                                      interval=self.genesis.finality_depth,
                                      ancestor=self._branch_ancestor(parent),
                                      weights=self._weights), parent.uncertain
        except InvalidBlockError:
            return parent.fin, True

    def _branch_ancestor(self, tip: _Entry) -> Callable[[int], bytes | None]:
        """Block ids by height along the branch that ends at ``tip``."""
        side: dict[int, bytes] = {}
        entry: _Entry | None = tip
        while entry is not None and not (entry.height <= self.height
                                         and self._canonical[entry.height] == entry.id):
            side[entry.height] = entry.id
            entry = self._entries.get(entry.parent)
        joined = entry.height if entry is not None else -1

        def ancestor(height: int) -> bytes | None:
            if height in side:
                return side[height]
            return self._canonical[height] if 0 <= height <= joined else None

        return ancestor

    def _better(self, entry: _Entry) -> bool:
        """Should the best chain switch to ``entry``'s branch? A longer branch whose
        justification cannot be told yet is tried (``_reorganize()`` goes back if it
        justifies less)."""
        assert entry.fin is not None
        theirs = (entry.fin.last_justified.height, entry.height)
        mine = (self.finality.last_justified.height, self.height)
        if entry.uncertain and entry.height > self.height and theirs < mine:
            return True
        if theirs != mine:
            return theirs > mine
        return entry.id < self.tip

    def _fork_height(self, entry: _Entry) -> int:
        """Height of the last block ``entry``'s branch shares with the best chain."""
        while not (entry.height <= self.height and self._canonical[entry.height] == entry.id):
            parent = self._entries.get(entry.parent)
            if parent is None:
                return -1  # its branch left the best chain below what we keep: below final
            entry = parent
        return entry.height

    def _apply(self, entry: _Entry) -> None:
        """Validate ``entry`` against the tip's state and make it the tip."""
        block = entry.block
        assert block is not None
        expected = leader(entry.parent, block.slot, self._lottery_stakes())
        if expected != block.proposer:
            raise InvalidBlockError(f"{block.proposer[-8:]} is not slot {block.slot}'s proposer")
        if entry.uncertain or entry.fin is None:
            # the preview could not check every vote: count them now, strictly (an exact
            # preview is the same computation along the same branch, so it stands)
            parent = self._entries[entry.parent].fin
            assert parent is not None  # the parent is the tip, applied
            entry.fin = parent.advance(entry.votes, height=entry.height,
                                       interval=self.genesis.finality_depth,
                                       ancestor=self._ancestor, weights=self._weights)
            entry.uncertain = False
        try:
            undo = self._apply_contents(entry.txs, entry.offences, entry.height)
        except InvalidTransactionError as exc:
            raise InvalidBlockError(f"block {entry.height}: {exc}") from None
        if self.state.root() != block.state_root:
            self.state.revert(undo)
            raise InvalidBlockError(f"block {entry.height}: state root mismatch")
        self._canonical.append(entry.id)
        self._undos.append(undo)
        self._side.discard(entry.id)
        if entry.height % self.genesis.finality_depth == 0:
            self._checkpoint_stakes[entry.id] = (entry.height, dict(self._lottery_stakes()))
        self._stored(entry)

    def _unapply(self) -> _Entry:
        bid = self._canonical.pop()
        self.state.revert(self._undos.pop())
        self._side.add(bid)
        return self._entries[bid]

    def _reorganize(self, entry: _Entry) -> bool:
        """Switch the best chain to ``entry``'s branch; False (and nothing changed) if, once
        applied, it justifies less than the current one."""
        justified = self.finality.last_justified.height
        branch = [entry]
        while (p := self._entries[branch[-1].parent]).height > 0 and \
                not (p.height <= self.height and self._canonical[p.height] == p.id):
            branch.append(p)
        branch.reverse()
        fork = branch[0].height - 1
        undone = [self._unapply() for _ in range(self.height - fork)]
        undone.reverse()
        applied: list[_Entry] = []
        try:
            for e in branch:
                self._apply(e)
                applied.append(e)
        except InvalidBlockError:
            bad = branch[len(applied)]
            for _ in applied:
                self._unapply()
            for e in undone:
                self._apply(e)  # the old branch was valid and still is
            self._reject(bad.id)
            raise
        if self.finality.last_justified.height < justified:
            for _ in applied:  # now known exactly (entry.fin): tried once only
                self._unapply()
            for e in undone:
                self._apply(e)
            self._count("reorganizations_declined")
            return False
        # transactions of the old branch go back to the pool; those in the new one leave it
        for e in undone:
            for stx in e.txs:
                self._pool_add(stx, self._now + self.pool_expiry)
        self._count("reorganizations")
        logger.info("reorganized: %d block(s) undone, %d applied, tip %d", len(undone),
                    len(branch), self.height)
        self._after_change()
        return True

    def _reject(self, bid: bytes) -> None:
        """Forget a block found invalid, and its descendants."""
        doomed = {bid}
        changed = True
        while changed:
            changed = False
            for e in list(self._entries.values()):
                if e.parent in doomed and e.id not in doomed:
                    doomed.add(e.id)
                    changed = True
        for d in doomed:
            self._forget(d)
            self._invalid[d] = None
        while len(self._invalid) > 4096:
            self._invalid.popitem(last=False)
        self._drop_dangling()
        self._count("invalid_blocks")

    def _forget(self, bid: bytes) -> None:
        """Drop a block that is not on the best chain from the tree."""
        self._entries.pop(bid, None)
        self._side.discard(bid)

    def _after_change(self) -> None:
        self._prune_pool()
        self._update_finality()

    def _update_finality(self) -> None:
        """Take the best chain's final checkpoint, if it is newer than ours.

        Once final here, a block stays final even on a branch whose own votes say less
        (one that lacks some of the votes): more than two thirds of the stake voted for it,
        wherever the votes were included.
        """
        final = self.finality.finalized
        if final.height > self.finalized_height:
            assert self._canonical[final.height] == final.id  # the branch's own ancestor
            self.finalized_height = final.height
            self._prune_below_final()

    def _prune_below_final(self) -> None:
        """Side blocks that fork below the final height can never win: drop them."""
        final = self.finalized_height
        canonical = set(self._canonical[:final + 1])
        for bid in list(self._side):
            e = self._entries.get(bid)
            if e is not None and e.height <= final and e.id not in canonical:
                self._forget(bid)
        self._drop_dangling()

    def _drop_dangling(self) -> None:
        """Forget side blocks whose ancestors were dropped (their branch cannot be
        followed back to the best chain any more), and the slot index of what is gone."""
        changed = True
        while changed:
            changed = False
            for bid in list(self._side):
                e = self._entries.get(bid)
                if e is None or e.parent not in self._entries:
                    self._forget(bid)
                    changed = True
        for key, bids in list(self._by_slot.items()):
            kept = [b for b in bids if b in self._entries]
            if not kept:
                del self._by_slot[key]
            elif len(kept) != len(bids):
                self._by_slot[key] = kept
        # stake tables a vote's source may still need: a branch that shares our final block
        # may itself have finalized less (it lacks some votes), and its blocks must be judged
        # by its own contents, so tables are kept well below our final height
        keep = self.finalized_height - STAKE_TABLES_BELOW_FINAL * self.genesis.finality_depth
        for cid, (height, _) in list(self._checkpoint_stakes.items()):
            if cid not in self._entries or height < keep:
                del self._checkpoint_stakes[cid]
        for key in [k for k in self.votes if k[1] <= self.finalized_height]:
            del self.votes[key]

    def _trim_side_blocks(self) -> None:
        """Keep side blocks within ``max_side_blocks`` and ``max_side_bytes``: the lowest
        go first (the least likely to win)."""
        size = sum(self._entries[b].size for b in self._side)
        if len(self._side) <= self.max_side_blocks and size <= self.max_side_bytes:
            return
        for bid in sorted(self._side, key=lambda b: (self._entries[b].height, b)):
            if len(self._side) <= self.max_side_blocks and size <= self.max_side_bytes:
                break
            size -= self._entries[bid].size
            self._forget(bid)
            self._count("side_blocks_dropped")
        self._drop_dangling()

    def _adopt_orphans(self, parent: bytes) -> None:
        waiting = [bid for bid, b in self._orphans.items() if b.parent == parent]
        for bid in waiting:
            block = self._orphans.pop(bid)
            self._orphan_bytes -= _size(block)
            try:
                self.add_block(block)
            except InvalidBlockError as exc:
                logger.debug("orphan block rejected: %s", exc)
