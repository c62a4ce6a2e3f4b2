"""Credits: who pays whom for served requests, behind a small interface.

``CreditAccount`` is what the dispatcher needs. ``CreditBook`` is an in-memory
implementation: give every node its own book (each node keeps its own view, as before a
ledger exists: the requester debits itself, the executor credits itself), or share one book
(``shared=True``) between the nodes of a simulation: one truth, where only the requester's
payment moves credit, handy for checking conservation. The ledger plugs in behind the same
interface later. Settlement is idempotent per request id: a request is never billed twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

__all__ = ["CreditAccount", "CreditBook"]


class CreditAccount(Protocol):
    """One node's view of its credit."""

    @property
    def owner(self) -> str:
        """The account's peer id."""
        ...

    def balance(self) -> float:
        """Spendable credit (not staked)."""
        ...

    def stake(self) -> float:
        """Credit staked (the node's weight in executor selection)."""
        ...

    def set_stake(self, amount: float) -> float:
        """Move credit between balance and stake so the stake is ``amount`` (clamped to
        what is available); returns the new stake."""
        ...

    def pay(self, payee: str, amount: float, request_id: str) -> bool:
        """Requester side: pay ``payee`` for ``request_id``; False if already paid or the
        balance is short."""
        ...

    def earn(self, payer: str, amount: float, request_id: str) -> bool:
        """Executor side: record the payment for ``request_id`` (a no-op where the payer's
        own ``pay()`` is the truth, as in a shared book or a ledger)."""
        ...

    def can_serve(self, payer: str, amount: float, running: int) -> bool:
        """Executor side: may ``payer``, with ``running`` requests running here already,
        have one more served for ``amount``? (On a ledger: only if it can pay for all of
        them and what it still owes; a book trusts everyone.)"""
        ...


class CreditBook:
    """In-memory balances, stakes and settled request ids for one or many accounts."""

    def __init__(self, initial: Mapping[str, float] | None = None,
                 staked: Mapping[str, float] | None = None, *, shared: bool = False) -> None:
        self.shared = shared
        self.balances: dict[str, float] = dict(initial or {})
        self.stakes: dict[str, float] = dict(staked or {})
        self.settled: dict[str, tuple[str, str, float]] = {}

    def open(self, peer_id: str, credit: float = 0.0, staked: float = 0.0) -> _BookAccount:
        """The account of ``peer_id`` (created with ``credit`` and ``staked`` if new)."""
        if peer_id not in self.balances:
            self.balances[peer_id] = credit
            self.stakes[peer_id] = staked
        return _BookAccount(self, peer_id)

    def total(self) -> float:
        """All credit in the book (balances plus stakes): conserved by settlements."""
        return sum(self.balances.values()) + sum(self.stakes.values())

    def settle(self, payer: str, payee: str, amount: float, request_id: str) -> bool:
        """Move ``amount`` from payer's balance to payee's, once per ``request_id``.

        An account this book does not hold is outside it (a node's own book holds only its
        own account): only the side the book holds is recorded.
        """
        if request_id in self.settled or amount < 0:
            return False
        if payer in self.balances:
            if self.balances[payer] < amount:
                return False
            self.balances[payer] -= amount
        if payee in self.balances:
            self.balances[payee] += amount
        self.settled[request_id] = (payer, payee, amount)
        return True


class _BookAccount:
    def __init__(self, book: CreditBook, owner: str) -> None:
        self._book = book
        self._owner = owner

    @property
    def owner(self) -> str:
        return self._owner

    def balance(self) -> float:
        return self._book.balances.get(self._owner, 0.0)

    def stake(self) -> float:
        return self._book.stakes.get(self._owner, 0.0)

    def set_stake(self, amount: float) -> float:
        b = self._book
        total = b.balances.get(self._owner, 0.0) + b.stakes.get(self._owner, 0.0)
        new = min(max(0.0, amount), total)
        b.stakes[self._owner] = new
        b.balances[self._owner] = total - new
        return new

    def pay(self, payee: str, amount: float, request_id: str) -> bool:
        return self._book.settle(self._owner, payee, amount, request_id)

    def earn(self, payer: str, amount: float, request_id: str) -> bool:
        if self._book.shared:
            return False
        return self._book.settle(payer, self._owner, amount, request_id)

    def can_serve(self, payer: str, amount: float, running: int) -> bool:
        return True
