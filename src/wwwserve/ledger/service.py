"""The ledger on the network: gossip of transactions and blocks, slots, sync, the block file.

One job: the I/O shell of one chain replica (every task here drives the same chain).

``LedgerService`` drives one node's ``Chain`` over any
``Overlay`` (libp2p or memory):

- transactions, blocks and finality votes travel on three GossipSub topics per network
  (``tx_topic()``, ``block_topic()``, ``vote_topic()``); whatever does not decode or
  validate is dropped and counted, never raised;
- whenever the best chain reaches a new checkpoint, a staked node votes for it
  (``finality``), after recording the vote on disk (``VoteRecord``);
- every slot (the genesis' ``slot_length``, on the injected wall clock) the node proposes
  a block if the lottery picked it;
- a node that misses blocks (a joiner, a restart, a healed partition, an orphan) catches up
  over the request/response protocol ``SYNC_PROTOCOL``: it sends a *locator* (ids of
  its best chain at exponentially spaced heights) and gets back the peer's blocks after
  the last id they share, at most ``SYNC_BATCH`` per request;
- accepted blocks are appended to the block file and replayed from it on start.

``LedgerAccount`` is the node's ``CreditAccount`` backed by the
chain: payments and stake changes become signed transactions.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import trio

from .._compat import TaskStatus
from ..clock import WallClock, system_wall_clock
from ..errors import (
    InvalidBlockError,
    InvalidTransactionError,
    OverlayError,
    ProtocolError,
)
from ..identity import Identity
from ..overlay import GossipMessage, Overlay, ResponseSender
from ..wire import Message, decode, encode, message
from .block import Block
from .chain import AddResult, Chain
from .finality import InvalidVoteError, decode_vote
from .store import BlockStore, VoteRecord
from .tx import (
    DuelSettlement,
    Payment,
    SignedTx,
    Skip,
    Stake,
    Transaction,
    Unstake,
    credits,
    decode_tx,
    micro,
    sign_tx,
)

__all__ = ["SYNC_BATCH", "SYNC_PROTOCOL", "LedgerAccount", "LedgerService", "block_topic",
           "ledger_view", "replay", "tx_topic", "vote_topic"]

logger = logging.getLogger(__name__)

SYNC_PROTOCOL = "/wwwserve/ledger-sync/1.0.0"
#: requests one payer may owe us for at once (served, payment not on the chain yet)
MAX_OWED = 64
#: payers whose debts are remembered, at most (the least recent are forgotten)
MAX_DEBTORS = 4096
#: seconds after which a debt is forgotten (a payment that never came stops counting)
OWED_TTL = 3600.0
#: our own payments followed until they are on the chain (``LedgerService.follow()``)
MAX_FOLLOWED = 4096
#: Most blocks one sync request returns.
SYNC_BATCH = 64
#: seconds one sync batch may take in all (a peer trickling blocks is left)
SYNC_BATCH_TIMEOUT = 20.0
#: seconds a sync peer that was too slow or failed is not asked again
SLOW_PEER_PENALTY = 120.0


def tx_topic(network: str) -> str:
    """Gossip topic of a network's transactions."""
    return f"wwwserve/{network}/ledger/tx/1"


def block_topic(network: str) -> str:
    """Gossip topic of a network's blocks."""
    return f"wwwserve/{network}/ledger/block/1"


def vote_topic(network: str) -> str:
    """Gossip topic of a network's finality votes."""
    return f"wwwserve/{network}/ledger/vote/1"


@message("ledger-sync", 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class SyncRequest(Message):
    """Blocks after the last of ``locator`` (best-chain ids, newest first) you share."""

    locator: tuple[bytes, ...]
    limit: int = SYNC_BATCH


def ledger_view(chain: Chain, *, last: int = 10, accounts: bool = True,
                stats: dict[str, int] | None = None) -> dict[str, object]:
    """A JSON-able summary of a chain: tip, final block, state root, the ``last`` blocks
    and (with ``accounts``) every account's balance, stake, unbonding credit and nonce."""
    state = chain.state
    view: dict[str, object] = {
        "network": chain.network, "height": chain.height, "tip": chain.tip.hex(),
        "finalized_height": chain.finalized_height, "finalized": chain.finalized.hex(),
        "justified_height": chain.finality.last_justified.height,
        "state_root": state.root().hex(), "pending": len(chain.pool),
        "total_credit": credits(state.total()), "duels_settled": len(state.settled),
        "offences_slashed": len(state.slashed),
        "stats": {**chain.stats, **(stats or {})},
        "blocks": [{"height": b.height, "slot": b.slot, "proposer": b.proposer,
                    "txs": len(b.txs)}
                   for b in chain.canonical_blocks(max(1, chain.height - last + 1), last)],
    }
    if accounts:
        view["accounts"] = [
            {"account": a, "balance": credits(state.balance(a)),
             "stake": credits(state.stake(a)),
             "unbonding": credits(state.unbonding_total(a)), "nonce": state.nonce(a)}
            for a in state.accounts()]
    return view


def replay(chain: Chain, store: BlockStore, *, repair: bool = True) -> int:
    """Add every block of ``store`` to ``chain``; returns how many were read.

    ``repair=False`` leaves a torn tail in the file (see ``BlockStore.load()``).

    Raises ``LedgerCorruptError`` for a damaged file and ``InvalidBlockError``
    for a block that does not fit the chain (a file of another network, say).
    """
    n = 0
    for payload in store.load(repair=repair):
        try:
            chain.add_block(decode(payload, expect=Block), from_disk=True)
        except (ProtocolError, InvalidBlockError) as exc:
            raise InvalidBlockError(
                f"{store.path}: block {n} does not fit this network's chain: {exc}") from None
        n += 1
    logger.info("ledger: %d block(s) loaded from %s, height %d", n, store.path, chain.height)
    return n


class LedgerService:
    """One node's ledger replica on the network (see the module docs)."""

    def __init__(self, overlay: Overlay, identity: Identity, chain: Chain, *,
                 peers: Callable[[], Iterable[str]], rng: random.Random,
                 store: BlockStore | None = None,
                 vote_record: VoteRecord | None = None,
                 wall_clock: WallClock = system_wall_clock, sync_interval: float = 10.0,
                 rebroadcast_interval: float = 10.0) -> None:
        self.overlay = overlay
        self.identity = identity
        self.chain = chain
        self.peers = peers
        self.store = store
        self.vote_record = vote_record
        #: (source height, target height) of our last finality vote
        self.last_vote = vote_record.load() if vote_record is not None else (0, 0)
        self.wall_clock = wall_clock
        self.sync_interval = sync_interval
        #: our own transactions still pending are gossiped again this often (a transaction
        #: published before the gossip mesh formed, or lost on the way, would otherwise
        #: hold up every later one of ours: nonces apply in order)
        self.rebroadcast_interval = rebroadcast_interval
        self._next_rebroadcast = 0.0
        self.rng = rng
        self.stats: dict[str, int] = {}
        self._changed = trio.Event()
        self._sync_wanted = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._sync_lock = trio.Lock()
        self._sync_from: str | None = None
        #: sync peers that were too slow or failed, avoided until the time given
        self._slow: dict[str, float] = {}
        #: our payments not yet on the chain, by request id (see ``follow()``)
        self._followed: OrderedDict[str, Payment] = OrderedDict()

    @property
    def network(self) -> str:
        """The network id (the genesis')."""
        return self.chain.network

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def current_slot(self) -> int:
        """The slot running now by the wall clock."""
        return self.chain.genesis.slot_at(self.wall_clock())

    async def wait_changed(self) -> None:
        """Wait until the best chain changes."""
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # ---- start --------------------------------------------------------------------------
    def load(self) -> int:
        """Replay the block file into the chain (before ``run()``); returns blocks read."""
        n = 0 if self.store is None else replay(self.chain, self.store)
        self.stats["blocks_loaded"] = n
        return n

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Gossip, propose, sync and persist until cancelled."""
        if self.store is not None:
            store = self.store
            previous = self.chain.on_block

            def persist(block: Block) -> None:
                store.append(encode(block))
                if previous is not None:
                    previous(block)

            self.chain.on_block = persist
        self.overlay.serve(SYNC_PROTOCOL, self._on_sync)
        async with self.overlay.subscribe(tx_topic(self.network), validate=self._valid_tx) \
                as txs, self.overlay.subscribe(block_topic(self.network),
                                               validate=self._valid_block) as blocks, \
                self.overlay.subscribe(vote_topic(self.network),
                                       validate=self._valid_vote) as votes, \
                trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._receive_txs, txs)
            nursery.start_soon(self._receive_blocks, blocks)
            nursery.start_soon(self._receive_votes, votes)
            nursery.start_soon(self._voting)
            nursery.start_soon(self._slots)
            nursery.start_soon(self._sync_loop)
            task_status.started()

    # ---- gossip validators (stateless: what may be relayed) ------------------------------
    def _valid_tx(self, data: bytes) -> bool:
        try:
            self.chain.admissible(decode_tx(data))
            return True
        except InvalidTransactionError:
            self._count("txs_rejected")
            return False

    def _valid_vote(self, data: bytes) -> bool:
        try:
            return decode_vote(data).vote.network == self.network
        except InvalidVoteError:
            self._count("votes_rejected")
            return False

    def _valid_block(self, data: bytes) -> bool:
        try:
            self.chain.check_alone(decode(data, expect=Block), self.current_slot())
        except (ProtocolError, InvalidBlockError):
            self._count("blocks_rejected")
            return False
        return True

    # ---- transactions -------------------------------------------------------------------
    def submit(self, stx: SignedTx) -> None:
        """Put our own transaction in the pool and gossip it (raises if it is invalid)."""
        self.chain.add_tx(stx, self.wall_clock())
        self._gossip(tx_topic(self.network), stx.envelope)

    def _gossip(self, topic: str, data: bytes) -> None:
        """Publish in the background; nothing once the node is stopping (what is in the
        pool then goes out with the next start's rebroadcast, if it is still pending)."""
        if self._nursery is None:
            return
        try:
            self._nursery.start_soon(self._publish, topic, data)
        except RuntimeError:  # the nursery is closed: the node is stopping
            logger.debug("not gossiped on %s: the node is stopping", topic)

    async def _publish(self, topic: str, data: bytes) -> None:
        try:
            await self.overlay.publish(topic, data)
        except OverlayError as exc:
            logger.debug("ledger publish failed: %s", exc)

    def repair_nonces(self) -> bool:
        """Keep our account's nonces moving: if our next pending transaction cannot apply
        (or its nonce went missing from the pool while later ones wait), sign a
        ``Skip`` for that nonce, which replaces it in every pool. True if one
        was sent."""
        me = self.identity.peer_id
        mine = self.chain.pending(me)
        if not mine:
            return False
        nonce = self.chain.state.nonce(me)
        head = mine[0]
        if head.tx.nonce == nonce and (isinstance(head.tx, Skip) or self.chain.applies(head)):
            return False
        skip = sign_tx(Skip(network=self.network, account=me, nonce=nonce), self.identity)
        try:
            self.submit(skip)
        except InvalidTransactionError as exc:
            logger.warning("cannot skip our nonce %d: %s", nonce, exc)
            return False
        self._count("nonces_skipped")
        logger.warning("our transaction with nonce %d cannot apply (%s): skipped",
                       nonce, type(head.tx).__name__ if head.tx.nonce == nonce else "missing")
        return True

    def next_nonce(self) -> int:
        """The nonce our next transaction takes: after the chain's and our pending ones."""
        pending = [s.tx.nonce for s in self.chain.pending(self.identity.peer_id)]
        return max([self.chain.state.nonce(self.identity.peer_id) - 1, *pending]) + 1

    def follow(self, payment: Payment) -> None:
        """Keep ``payment`` (ours, submitted) until the chain holds it: see
        ``resign_lost_payments()``."""
        self._followed[payment.request_id] = payment
        self._followed.move_to_end(payment.request_id)
        while len(self._followed) > MAX_FOLLOWED:
            self._followed.popitem(last=False)

    def resign_lost_payments(self) -> int:
        """Sign again, with a fresh nonce, each followed payment that is neither on the
        chain nor pending any more; returns how many.

        A payment can lose its place without being refused: after a restart our nonces
        start again from the chain's, while transactions we signed before it still wait
        in peers' pools under the same nonces; whichever is included first takes the
        nonce, and the other is dropped. Expiry and eviction drop one too. Signing it
        again cannot pay twice: the chain takes one payment per (payer, request id).
        """
        me = self.identity.peer_id
        paid = self.chain.state.paid
        pending = {s.tx.request_id for s in self.chain.pending(me) if isinstance(s.tx, Payment)}
        again = 0
        for rid, payment in list(self._followed.items()):
            if (me, rid) in paid:
                del self._followed[rid]
                continue
            if rid in pending:
                continue
            fresh = replace(payment, nonce=self.next_nonce())
            try:
                self.submit(sign_tx(fresh, self.identity))
            except InvalidTransactionError as exc:
                logger.warning("payment for %s lost and not signed again: %s", rid, exc)
                del self._followed[rid]
                continue
            self._followed[rid] = fresh
            self._count("payments_resigned")
            logger.info("payment for %s lost its nonce %d: signed again as %d", rid,
                        payment.nonce, fresh.nonce)
            again += 1
        return again

    async def _rebroadcast(self) -> None:
        """Gossip our pending transactions again (the oldest nonces first)."""
        pending = sorted(self.chain.pending(self.identity.peer_id), key=lambda s: s.tx.nonce)
        for stx in pending[:64]:
            self._count("txs_rebroadcast")
            await self._publish(tx_topic(self.network), stx.envelope)

    async def _receive_txs(self, channel: trio.MemoryReceiveChannel[GossipMessage]) -> None:
        async for msg in channel:
            try:
                self.chain.add_tx(msg.data, self.wall_clock())
                self._count("txs_received")
            except InvalidTransactionError as exc:
                self._count("txs_rejected")
                logger.debug("transaction from %s rejected: %s", msg.source[-8:], exc)

    # ---- finality votes -----------------------------------------------------------------
    async def _receive_votes(self, channel: trio.MemoryReceiveChannel[GossipMessage]) -> None:
        async for msg in channel:
            try:
                if self.chain.add_vote(msg.data) is not None:
                    self._count("votes_received")
            except InvalidVoteError as exc:
                self._count("votes_rejected")
                logger.debug("vote from %s rejected: %s", msg.source[-8:], exc)

    async def _voting(self) -> None:
        """Vote whenever the best chain changes and a new checkpoint is due."""
        while True:
            changed = self._changed
            self.cast_vote()
            await changed.wait()

    def cast_vote(self) -> bool:
        """Cast (record, then gossip) the vote due now, if any; True if one was cast."""
        vote = self.chain.vote(self.identity, after=self.last_vote)
        if vote is None:
            return False
        self.last_vote = (vote.vote.source_height, vote.vote.target_height)
        if self.vote_record is not None:
            self.vote_record.save(*self.last_vote)
        self._count("votes_cast")
        self._gossip(vote_topic(self.network), vote.envelope)
        return True

    # ---- blocks -------------------------------------------------------------------------
    async def _receive_blocks(self, channel: trio.MemoryReceiveChannel[GossipMessage]) -> None:
        async for msg in channel:
            try:
                block = decode(msg.data, expect=Block)
            except ProtocolError as exc:
                self._count("blocks_rejected")
                logger.debug("undecodable block from %s: %s", msg.source[-8:], exc)
                continue
            self._take(block, msg.source)

    def _take(self, block: Block, source: str) -> AddResult | None:
        try:
            result = self.chain.add_block(block, current_slot=self.current_slot())
        except InvalidBlockError as exc:
            self._count("blocks_rejected")
            logger.debug("block %d from %s rejected: %s", block.height, source[-8:], exc)
            return None
        self._count(f"blocks_{result.value}")
        if result is AddResult.ORPHAN:
            self._want_sync(source)
        elif result in (AddResult.EXTENDED, AddResult.REORGANIZED):
            self._notify()
        return result

    async def _slots(self) -> None:
        slot_length = self.chain.genesis.slot_length
        while True:
            now = self.wall_clock()
            slot = self.chain.genesis.slot_at(now)
            self.chain.expire(now)
            self.repair_nonces()
            self.resign_lost_payments()
            block = self.chain.propose(self.identity, slot)
            if block is not None:
                self._count("blocks_proposed")
                self._notify()
                await self._publish(block_topic(self.network), encode(block))
            if now >= self._next_rebroadcast:
                if self._next_rebroadcast:
                    await self._rebroadcast()
                self._next_rebroadcast = now + self.rebroadcast_interval
            next_start = self.chain.genesis.time + (slot + 1) * slot_length
            await trio.sleep(max(0.0, next_start - self.wall_clock()) + 1e-6)

    # ---- sync ---------------------------------------------------------------------------
    def _want_sync(self, peer: str | None = None) -> None:
        self._sync_from = peer
        self._sync_wanted.set()

    def locator(self) -> tuple[bytes, ...]:
        """Best-chain ids at heights tip, tip-1, tip-2, tip-4, ... and the final block."""
        out = []
        step, h = 1, self.chain.height
        while h > self.chain.finalized_height:
            bid = self.chain.canonical_id(h)
            assert bid is not None
            out.append(bid)
            if len(out) >= 10:
                step *= 2
            h -= step
        out.append(self.chain.finalized)
        return tuple(out)

    async def _sync_loop(self) -> None:
        while True:
            with trio.move_on_after(self.sync_interval):
                await self._sync_wanted.wait()
            self._sync_wanted = trio.Event()
            peer = self._sync_from
            self._sync_from = None
            candidates = [p for p in self.peers()
                          if p != self.overlay.peer_id and self._usable(p)]
            if (peer is None or not self._usable(peer)) and candidates:
                peer = self.rng.choice(sorted(candidates))
            elif peer is not None and not self._usable(peer):
                peer = None
            if peer is not None:
                await self.sync_from(peer)

    async def sync_from(self, peer: str, *, max_rounds: int = 1000) -> int:
        """Fetch the blocks ``peer`` has beyond ours; returns how many were new.

        Each batch must arrive within ``SYNC_BATCH_TIMEOUT`` and bring something new:
        a peer that trickles blocks, or sends only what we have, is left (and avoided for
        ``SLOW_PEER_PENALTY`` seconds) so that another one is asked.
        """
        new = 0
        async with self._sync_lock:
            for _ in range(max_rounds):
                got = fresh = 0
                request = encode(SyncRequest(locator=self.locator(), limit=SYNC_BATCH))
                with trio.move_on_after(SYNC_BATCH_TIMEOUT) as batch:
                    try:
                        async with self.overlay.request(peer, SYNC_PROTOCOL, request,
                                                        idle_timeout=10.0) as resp:
                            async for data in resp:
                                got += 1
                                block = decode(data, expect=Block)
                                if self._take(block, peer) in (AddResult.EXTENDED,
                                                               AddResult.REORGANIZED,
                                                               AddResult.SIDE):
                                    fresh += 1
                    except (OverlayError, ProtocolError) as exc:
                        logger.debug("ledger sync from %s failed: %s", peer[-8:], exc)
                        self._avoid(peer)
                        break
                new += fresh
                if batch.cancelled_caught:
                    self._count("sync_timeouts")
                    logger.info("ledger sync from %s: a batch took over %g s; asking "
                                "another peer", peer[-8:], SYNC_BATCH_TIMEOUT)
                    self._avoid(peer)
                    self._want_sync()
                    break
                if got < SYNC_BATCH or not fresh:
                    break
        if new:
            self._count("blocks_synced", new)
        return new

    def _avoid(self, peer: str) -> None:
        self._slow[peer] = self.wall_clock() + SLOW_PEER_PENALTY
        while len(self._slow) > 1024:
            del self._slow[next(iter(self._slow))]

    def _usable(self, peer: str) -> bool:
        until = self._slow.get(peer)
        if until is None:
            return True
        if until <= self.wall_clock():
            del self._slow[peer]
            return True
        return False

    async def _on_sync(self, peer: str, payload: bytes, sender: ResponseSender) -> None:
        req = decode(payload, expect=SyncRequest)
        if len(req.locator) > 64:
            raise ProtocolError("locator too long")
        start = 1
        for bid in req.locator:
            block = self.chain.block(bid)
            height = 0 if bid == self.chain.genesis.id else (
                block.height if block is not None else -1)
            if height >= 0 and self.chain.canonical_id(height) == bid:
                start = height + 1
                break
        for block in self.chain.canonical_blocks(start, max(0, min(req.limit, SYNC_BATCH))):
            await sender.send(encode(block))


class LedgerAccount:
    """A node's ``CreditAccount`` on the ledger.

    Amounts are in credits (floats) at this interface, micro-credits on the chain. Balance
    and stake are read from the best chain's tip, less this node's pending payments.
    A stake change is one transaction at a time (the next waits until it is included), and
    only when it moves the stake by ``min_stake_step`` credits or 5%, whichever is more.

    The stake never goes below ``min_stake`` (while the account holds that much): stake is
    also the weight of the block-proposer lottery, and a network whose nodes are all busy
    (so their policies want no stake) must keep producing blocks.
    """

    def __init__(self, service: LedgerService, *, min_stake: float = 1.0,
                 min_stake_step: float = 1.0) -> None:
        self.service = service
        self.min_stake = min_stake
        self.min_stake_step = min_stake_step
        #: payer -> request id -> when we served it, until its payment is on the chain
        self._owed: OrderedDict[str, dict[str, float]] = OrderedDict()

    @property
    def owner(self) -> str:
        """The account's peer id."""
        return self.service.identity.peer_id

    def _pending(self) -> list[SignedTx]:
        return self.service.chain.pending(self.owner)

    def balance(self) -> float:
        """Spendable credit: the tip's balance less pending payments, stakes and duel
        rewards."""
        out = 0
        for s in self._pending():
            if isinstance(s.tx, Payment | Stake):
                out += s.tx.amount
            elif isinstance(s.tx, DuelSettlement) and s.tx.winner:
                out += s.tx.reward
        return credits(self.service.chain.state.balance(self.owner) - out)

    def stake(self) -> float:
        """Staked credit at the tip."""
        return credits(self.service.chain.state.stake(self.owner))

    def set_stake(self, amount: float) -> float:
        """Ask for a stake of ``amount`` (one stake transaction in flight at a time)."""
        current = self.stake()
        available = current + max(0.0, self.balance())
        target = min(max(amount, self.min_stake), available)
        step = max(self.min_stake_step, 0.05 * current)
        if abs(target - current) < step or any(
                isinstance(s.tx, Stake | Unstake) for s in self._pending()):
            return current
        cls = Stake if target > current else Unstake
        change = micro(abs(target - current))
        if not self.submit(lambda nonce: cls(network=self.service.network,
                                             account=self.owner, amount=change, nonce=nonce)):
            return current
        return target

    def pay(self, payee: str, amount: float, request_id: str) -> bool:
        """Sign and gossip a payment; False if the balance is short or it cannot go out."""
        value = micro(amount)
        if value <= 0 or micro(self.balance()) < value:
            return False
        payment = Payment(network=self.service.network, payer=self.owner, payee=payee,
                          amount=value, request_id=request_id,
                          nonce=self.service.next_nonce())
        if not self._submit(payment):
            return False
        self.service.follow(payment)
        return True

    def earn(self, payer: str, amount: float, request_id: str) -> bool:
        """Remember that ``payer`` owes us for ``request_id`` until its payment is on the
        chain (the payer's signed payment is the record; see ``can_serve()``). Free
        work (``amount`` 0) is owed nothing."""
        if micro(amount) <= 0:
            return False
        owed = self._owed.setdefault(payer, {})
        self._owed.move_to_end(payer)
        owed[request_id] = self.service.wall_clock()
        while len(owed) > MAX_OWED:
            del owed[next(iter(owed))]
        while len(self._owed) > MAX_DEBTORS:
            self._owed.popitem(last=False)
        return False

    def owed_by(self, payer: str) -> int:
        """Requests we served ``payer`` that it has not paid for on the chain yet."""
        owed = self._owed.get(payer)
        if not owed:
            return 0
        paid = self.service.chain.state.paid
        stale = self.service.wall_clock() - OWED_TTL
        for rid in [r for r, t in owed.items() if (payer, r) in paid or t < stale]:
            del owed[rid]
        if not owed:
            del self._owed[payer]
        return len(owed)

    def can_serve(self, payer: str, amount: float, running: int) -> bool:
        """Only if ``payer``'s credit on the chain (less what it has pending) covers this
        request, the ``running`` ones and those it still owes us: a key without credit,
        or Sybils sharing little, get nothing for free."""
        owed = self.owed_by(payer)
        if owed >= MAX_OWED:
            return False
        return self.service.chain.spendable(payer) >= micro(amount) * (running + owed + 1)

    def submit(self, make: Callable[[int], Transaction]) -> bool:
        """Sign and gossip ``make(nonce)`` with this account's next nonce; False (logged)
        if the ledger rejects it."""
        return self._submit(make(self.service.next_nonce()))

    def _submit(self, tx: Transaction) -> bool:
        try:
            self.service.submit(sign_tx(tx, self.service.identity))
        except InvalidTransactionError as exc:
            logger.warning("%s not submitted: %s", type(tx).__name__, exc)
            return False
        return True
