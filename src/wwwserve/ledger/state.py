"""The ledger's state (balances, stakes, unbonding, nonces) and its transition rules.

``LedgerState`` is sans-IO and deterministic: every node applying the same blocks gets
the same state and the same ``root()``. Every change is recorded in an
``Undo`` log, so a block can be reverted exactly when the chain reorganises.

Rules (each violation raises ``InvalidTransactionError`` and changes nothing):

- the transaction's ``network`` is this ledger's; its ``nonce`` is the signer's next one;
- amounts are positive; nobody spends more than its balance; an unstake moves up to its
  amount (what is left of the stake after penalties);
- a payment's payee is a valid peer id other than the payer; a payer pays for a given
  ``request_id`` at most once;
- a join grant needs the network's ``join_grant`` > 0, nonce 0, and is granted once;
- a duel settlement is settled once per (requester, ``duel_id``); its amounts are the
  network's (``Rules``) and its winner, loser and judge groups must be exactly what its
  signed evidence implies (``wwwserve.evidence.outcome_of()``); penalties are taken
  from stake first, then from unbonding credit (so unstaking cannot dodge them), and go to
  the winner and the majority judges. A forfeit (one executor gave no receipted answer)
  moves no stake: the answering executor gets the reward from the requester. A judged
  duel's judges must be the ones ``wwwserve.evidence.draw_judges()`` draws at the
  record's checkpoint (``LedgerState.judge_check``, which the chain provides).

- equivocation evidence (``slashing``, carried by blocks) slashes its offender once
  per offence: ``equivocation_ppm`` of its stake and unbonding credit is burned, the rest
  of its stake moves to unbonding.

Total credit (balances + stakes + unbonding) only changes by join grants, which
``LedgerState.issued`` counts, and by slashing, which burns what
``LedgerState.burned`` counts: ``total() == genesis supply + issued - burned`` always.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import IdentityError, InvalidTransactionError
from ..evidence import DuelRecord, outcome_of
from ..identity import canonical_bytes, public_key_from_peer_id
from .tx import DuelSettlement, JoinGrant, Payment, SignedTx, Skip, Stake, Unstake, signer_of

__all__ = ["LedgerState", "Rules", "Undo"]

PPM = 1_000_000
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Rules:
    """A network's ledger rules (fixed by its genesis)."""

    network: str
    unbonding_blocks: int = 30
    join_grant: int = 0
    #: duel settlement amounts (micro-credits; parts per million of stake), the authors'
    #: defaults: 1 credit to the winner, all of the loser's stake to the winner, 20% of a
    #: minority judge's stake and 5% of a silent judge's to the majority
    duel_reward: int = 1_000_000
    duel_loser_ppm: int = 1_000_000
    duel_minority_ppm: int = 200_000
    duel_silent_ppm: int = 50_000
    #: share of an equivocator's stake and unbonding credit that is burned (ppm)
    equivocation_ppm: int = 100_000


@dataclass(slots=True)
class Undo:
    """What one block (or transaction) changed, to put it back (most recent last)."""

    entries: list[tuple[dict[Any, Any], Any, Any]] = field(default_factory=list)

    def extend(self, other: Undo) -> None:
        """Append another log's entries (applied after this one's)."""
        self.entries.extend(other.entries)


class LedgerState:
    """Balances, stakes, unbonding credit, nonces and settled ids (see the module docs)."""

    def __init__(self, rules: Rules, balances: Mapping[str, int] | None = None,
                 stakes: Mapping[str, int] | None = None) -> None:
        self.rules = rules
        self.balances: dict[str, int] = {k: v for k, v in (balances or {}).items() if v}
        self.stakes: dict[str, int] = {k: v for k, v in (stakes or {}).items() if v}
        #: account -> ((release height, amount), ...)
        self.unbonding: dict[str, tuple[tuple[int, int], ...]] = {}
        self.nonces: dict[str, int] = {}
        self.paid: dict[tuple[str, str], bool] = {}
        #: payer -> payments of its on this chain (what a dashboard's "confirmed" reads)
        self.payments_made: dict[str, int] = {}
        self.settled: dict[tuple[str, str], bool] = {}
        self.granted: dict[str, bool] = {}
        #: offences already slashed (``Offence`` keys)
        self.slashed: dict[tuple[str, str, int], bool] = {}
        self.meta: dict[str, int] = {"issued": 0, "burned": 0}
        self.genesis_supply = self.total()
        #: checks a judged duel's record (its checkpoint and its judges) at a height;
        #: raises ``InvalidTransactionError``. Set by the chain, which keeps the
        #: checkpoints' stake tables; without it judges are not checked (bare states in
        #: tests of the other rules)
        self.judge_check: Callable[[DuelRecord, int], None] | None = None

    # ---- reading ------------------------------------------------------------------------
    @property
    def issued(self) -> int:
        """Credit created by join grants since genesis."""
        return self.meta["issued"]

    @property
    def burned(self) -> int:
        """Credit destroyed by slashing since genesis."""
        return self.meta["burned"]

    def balance(self, account: str) -> int:
        """Spendable micro-credits of ``account``."""
        return self.balances.get(account, 0)

    def stake(self, account: str) -> int:
        """Staked micro-credits of ``account``."""
        return self.stakes.get(account, 0)

    def unbonding_total(self, account: str) -> int:
        """Micro-credits of ``account`` waiting to be released from its stake."""
        return sum(a for _, a in self.unbonding.get(account, ()))

    def nonce(self, account: str) -> int:
        """The nonce ``account``'s next transaction must carry."""
        return self.nonces.get(account, 0)

    def total(self) -> int:
        """All credit: balances, stakes and unbonding."""
        return (sum(self.balances.values()) + sum(self.stakes.values())
                + sum(a for entries in self.unbonding.values() for _, a in entries))

    def total_stake(self) -> int:
        """The sum of all stakes (the weight of the proposer and executor lotteries)."""
        return sum(self.stakes.values())

    def accounts(self) -> list[str]:
        """Every account the state knows, sorted."""
        return sorted({*self.balances, *self.stakes, *self.unbonding, *self.nonces})

    def root(self) -> bytes:
        """The SHA-256 of the canonical encoding of every account's state."""
        rows = [[a, self.balance(a), self.stake(a),
                 [list(e) for e in self.unbonding.get(a, ())], self.nonce(a)]
                for a in self.accounts()]
        return hashlib.sha256(canonical_bytes([self.rules.network, self.meta["issued"],
                                               self.meta["burned"], rows])).digest()

    # ---- changing -----------------------------------------------------------------------
    def _set(self, undo: Undo, table: dict[Any, Any], key: Any, value: Any) -> None:
        undo.entries.append((table, key, table.get(key, _MISSING)))
        if (value == 0 and table is not self.meta) or value is _MISSING:
            table.pop(key, None)
        else:
            table[key] = value

    def revert(self, undo: Undo) -> None:
        """Put back everything ``undo`` recorded (in reverse order)."""
        for table, key, old in reversed(undo.entries):
            if old is _MISSING:
                table.pop(key, None)
            else:
                table[key] = old
        undo.entries.clear()

    def begin_block(self, height: int) -> Undo:
        """Release unbonding credit that matures at ``height``."""
        undo = Undo()
        for account in sorted(self.unbonding):
            entries = self.unbonding[account]
            due = sum(a for h, a in entries if h <= height)
            if due:
                rest = tuple(e for e in entries if e[0] > height)
                self._set(undo, self.unbonding, account, rest or _MISSING)
                self._set(undo, self.balances, account, self.balance(account) + due)
        return undo

    def apply(self, stx: SignedTx, height: int) -> Undo:
        """Apply one verified transaction at ``height``; raises if a rule forbids it."""
        tx = stx.tx
        signer = signer_of(tx)
        self._check_common(tx.network, signer, tx.nonce)
        undo = Undo()
        try:
            if isinstance(tx, Payment):
                self._payment(tx, undo)
            elif isinstance(tx, Stake):
                self._positive(tx.amount)
                if self.balance(signer) < tx.amount:
                    raise InvalidTransactionError(
                        f"stake of {tx.amount} exceeds the balance {self.balance(signer)}")
                self._set(undo, self.balances, signer, self.balance(signer) - tx.amount)
                self._set(undo, self.stakes, signer, self.stake(signer) + tx.amount)
            elif isinstance(tx, Unstake):
                # up to ``amount``: a penalty may have taken stake since it was signed, and
                # an unstake that could never apply would hold up every later transaction
                # of the account (nonces apply in order)
                self._positive(tx.amount)
                amount = min(tx.amount, self.stake(signer))
                if amount:
                    self._set(undo, self.stakes, signer, self.stake(signer) - amount)
                    release = height + self.rules.unbonding_blocks
                    self._set(undo, self.unbonding, signer,
                              (*self.unbonding.get(signer, ()), (release, amount)))
            elif isinstance(tx, JoinGrant):
                if self.rules.join_grant <= 0:
                    raise InvalidTransactionError("this network has no join grant")
                if tx.nonce != 0 or signer in self.granted:
                    raise InvalidTransactionError("the join grant is claimed once, first thing")
                self._set(undo, self.granted, signer, True)
                self._set(undo, self.balances, signer, self.balance(signer) + self.rules.join_grant)
                self._set(undo, self.meta, "issued", self.meta["issued"] + self.rules.join_grant)
            elif isinstance(tx, DuelSettlement):
                self._duel(tx, undo, height)
            elif isinstance(tx, Skip):
                pass  # only the nonce moves on
            else:  # pragma: no cover - decode_tx admits only the types above
                raise InvalidTransactionError(f"unknown transaction {type(tx).__name__}")
        except InvalidTransactionError:
            self.revert(undo)
            raise
        self._set(undo, self.nonces, signer, tx.nonce + 1)
        return undo

    def apply_all(self, txs: Iterable[SignedTx], height: int) -> Undo:
        """Begin block ``height`` and apply ``txs`` in order, all or nothing."""
        undo = self.begin_block(height)
        try:
            for stx in txs:
                undo.extend(self.apply(stx, height))
        except BaseException:
            self.revert(undo)
            raise
        return undo

    def slash(self, offender: str, key: tuple[str, str, int], height: int) -> Undo:
        """Slash ``offender`` for the offence ``key`` (see the module docs); raises if that
        offence was already slashed."""
        if key in self.slashed:
            raise InvalidTransactionError(f"offence {key[0]} of {offender[-8:]} at {key[2]} "
                                          "is already slashed")
        undo = Undo()
        self._set(undo, self.slashed, key, True)
        burned = self._slash(undo, offender, self.rules.equivocation_ppm)
        self._set(undo, self.meta, "burned", self.meta["burned"] + burned)
        rest = self.stake(offender)
        if rest:  # jailed: no more proposing or being drawn until it stakes again
            self._set(undo, self.stakes, offender, 0)
            release = height + self.rules.unbonding_blocks
            self._set(undo, self.unbonding, offender,
                      (*self.unbonding.get(offender, ()), (release, rest)))
        return undo

    # ---- rules --------------------------------------------------------------------------
    def _check_common(self, network: str, signer: str, nonce: int) -> None:
        if network != self.rules.network:
            raise InvalidTransactionError(
                f"transaction for network {network!r}, this is {self.rules.network!r}")
        expected = self.nonce(signer)
        if nonce != expected:
            raise InvalidTransactionError(
                f"nonce {nonce} of {signer[-8:]} is {'used' if nonce < expected else 'early'}"
                f"; the next is {expected}")

    @staticmethod
    def _positive(amount: int) -> None:
        if amount <= 0:
            raise InvalidTransactionError(f"amount must be positive, got {amount}")

    @staticmethod
    def _valid_account(account: str, what: str) -> None:
        try:
            public_key_from_peer_id(account)
        except IdentityError:
            raise InvalidTransactionError(f"{what} is not a valid peer id: {account!r}") from None

    def _payment(self, tx: Payment, undo: Undo) -> None:
        self._positive(tx.amount)
        self._valid_account(tx.payee, "payee")
        if tx.payee == tx.payer:
            raise InvalidTransactionError("a payment to oneself")
        if (tx.payer, tx.request_id) in self.paid:
            raise InvalidTransactionError(f"request {tx.request_id!r} is already paid for")
        if self.balance(tx.payer) < tx.amount:
            raise InvalidTransactionError(
                f"payment of {tx.amount} exceeds the balance {self.balance(tx.payer)}")
        self._set(undo, self.paid, (tx.payer, tx.request_id), True)
        self._set(undo, self.payments_made, tx.payer, self.payments_made.get(tx.payer, 0) + 1)
        self._set(undo, self.balances, tx.payer, self.balance(tx.payer) - tx.amount)
        self._set(undo, self.balances, tx.payee, self.balance(tx.payee) + tx.amount)

    def _slash(self, undo: Undo, account: str, ppm: int) -> int:
        """Take ``ppm`` of the account's stake plus unbonding credit; return the amount."""
        exposed = self.stake(account) + self.unbonding_total(account)
        amount = exposed * ppm // PPM
        from_stake = min(amount, self.stake(account))
        self._set(undo, self.stakes, account, self.stake(account) - from_stake)
        rest = amount - from_stake
        if rest:
            entries = []
            for release, a in self.unbonding.get(account, ()):
                take = min(a, rest)
                rest -= take
                if a - take:
                    entries.append((release, a - take))
            self._set(undo, self.unbonding, account, tuple(entries) or _MISSING)
        return amount

    def _duel(self, tx: DuelSettlement, undo: Undo, height: int) -> None:
        if (tx.requester, tx.duel_id) in self.settled:
            raise InvalidTransactionError(f"duel {tx.duel_id!r} is already settled")
        r = self.rules
        amounts = (tx.reward, tx.loser_penalty_ppm, tx.minority_penalty_ppm,
                   tx.silent_penalty_ppm)
        rules = (r.duel_reward, r.duel_loser_ppm, r.duel_minority_ppm, r.duel_silent_ppm)
        if amounts != rules:
            raise InvalidTransactionError(
                f"duel amounts (reward, loser, minority, silent ppm) {amounts} are not the "
                f"network's {rules}")
        outcome = outcome_of(tx.evidence, network=tx.network, requester=tx.requester,
                             duel_id=tx.duel_id)
        claimed = (tx.winner, tx.loser, tx.majority, tx.minority, tx.silent)
        derived = (outcome.winner, outcome.loser, outcome.majority, outcome.minority,
                   outcome.silent)
        if claimed != derived:
            raise InvalidTransactionError(
                "the settlement does not follow from its evidence (winner, loser, majority, "
                "minority or silent judges differ)")
        for account in {tx.requester, *(p for group in derived[2:] for p in group),
                        *([tx.winner, tx.loser] if tx.winner else [])}:
            self._valid_account(account, "duel party")
        record = outcome.record
        if record is not None and record.judges and self.judge_check is not None:
            self.judge_check(record, height)
        self._set(undo, self.settled, (tx.requester, tx.duel_id), True)
        if not outcome.tie:
            if tx.reward:
                if self.balance(tx.requester) < tx.reward:
                    raise InvalidTransactionError("the requester cannot pay the duel's reward")
                self._set(undo, self.balances, tx.requester,
                          self.balance(tx.requester) - tx.reward)
            won = tx.reward
            if not outcome.forfeit:  # a missing answer cannot be proven: no stake moves
                won += self._slash(undo, tx.loser, tx.loser_penalty_ppm)
            self._set(undo, self.balances, tx.winner, self.balance(tx.winner) + won)
        if not tx.majority:
            return  # judges are penalised only in favour of a majority (none voted)
        pot = sum(self._slash(undo, j, tx.minority_penalty_ppm) for j in tx.minority)
        pot += sum(self._slash(undo, j, tx.silent_penalty_ppm) for j in tx.silent)
        if pot:
            share, extra = divmod(pot, len(tx.majority))
            for i, judge in enumerate(sorted(tx.majority)):
                self._set(undo, self.balances, judge,
                          self.balance(judge) + share + (1 if i < extra else 0))
