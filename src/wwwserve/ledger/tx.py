"""Ledger transactions: what they say, who signs them, and their identity.

Every transaction is a registered wire message carrying the ``network`` it belongs to (so a
transaction cannot be replayed on another network) and the ``nonce`` of the account that
signs it (so it cannot be replayed on this one: an account's transactions apply in nonce
order, each nonce once). A transaction travels as a ``Signed``
envelope whose signer must be the account the transaction debits (``signer_of()``).

Amounts are integers in micro-credits (``UNIT`` per credit), so balances add up exactly.

=================  ===========================  ============================================
transaction        signed by                    effect
=================  ===========================  ============================================
Payment            the payer                    ``amount`` from payer to payee, once per
                                                (payer, ``request_id``)
Stake              the account                  balance -> stake
Unstake            the account                  up to ``amount`` of stake -> unbonding,
                                                released to the balance ``unbonding_blocks``
                                                later (so stake cannot escape a penalty
                                                that is on its way)
JoinGrant          the new account              the network's ``join_grant`` (if any), once
                                                per account, as its first transaction
Skip               the account                  nothing: it uses up a nonce, so that a
                                                transaction that could not apply (and was
                                                dropped) holds up none of the later ones
DuelSettlement     the duel's requester         defined here, evidence checked by the duel
                                                protocol (see ``wwwserve.ledger.state``)
=================  ===========================  ============================================

Genesis allocations are not transactions: they are the genesis block's content
(``Genesis``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TypeAlias

from ..errors import InvalidTransactionError, ProtocolError
from ..identity import Identity
from ..wire import Message, Signed, decode, encode, message, seal, unseal

__all__ = [
    "UNIT",
    "DuelSettlement",
    "JoinGrant",
    "Payment",
    "SignedTx",
    "Skip",
    "Stake",
    "Transaction",
    "Unstake",
    "credits",
    "decode_tx",
    "micro",
    "sign_tx",
    "signer_of",
    "tx_id",
]

#: Micro-credits per credit.
UNIT = 1_000_000


def micro(credits: float) -> int:
    """Credits (as in configs and the paper) to integer micro-credits."""
    return round(credits * UNIT)


def credits(amount: int) -> float:
    """Integer micro-credits to credits."""
    return amount / UNIT


@message("tx-payment", 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class Payment(Message):
    """The payer pays the payee for the request ``request_id`` it served."""

    network: str
    payer: str
    payee: str
    amount: int
    request_id: str
    nonce: int


@message("tx-stake", 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class Stake(Message):
    """Move ``amount`` of the account's balance into its stake."""

    network: str
    account: str
    amount: int
    nonce: int


@message("tx-unstake", 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class Unstake(Message):
    """Move ``amount`` of the account's stake to unbonding (released after a delay)."""

    network: str
    account: str
    amount: int
    nonce: int


@message("tx-join-grant", 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class JoinGrant(Message):
    """A new account claims the network's join grant (nonce 0 only, once)."""

    network: str
    account: str
    nonce: int


@message("tx-skip", 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class Skip(Message):
    """Use up nonce ``nonce`` of the account, changing nothing else."""

    network: str
    account: str
    nonce: int


@message("tx-duel-settlement", 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class DuelSettlement(Message):
    """The outcome of a duel, signed by the requester that ran it.

    ``winner`` gains ``reward``; ``loser`` loses ``loser_penalty`` (a fraction in parts per
    million of its stake) to the winner; judges in ``minority`` and ``silent`` lose their
    fractions of stake, shared equally by the judges in ``majority``. A tie (``winner`` and
    ``loser`` empty) moves nothing between the executors. ``evidence`` holds the signed
    duel record and votes, checked by the duel protocol before the requester signs.
    """

    network: str
    requester: str
    duel_id: str
    winner: str
    loser: str
    reward: int
    loser_penalty_ppm: int
    majority: tuple[str, ...]
    minority: tuple[str, ...]
    silent: tuple[str, ...]
    minority_penalty_ppm: int
    silent_penalty_ppm: int
    evidence: bytes
    nonce: int


Transaction: TypeAlias = Payment | Stake | Unstake | JoinGrant | Skip | DuelSettlement
_TX_TYPES = (Payment, Stake, Unstake, JoinGrant, Skip, DuelSettlement)


def signer_of(tx: Transaction) -> str:
    """The account that must sign ``tx`` (the one it debits)."""
    if isinstance(tx, Payment):
        return tx.payer
    if isinstance(tx, DuelSettlement):
        return tx.requester
    return tx.account


@dataclass(frozen=True, slots=True)
class SignedTx:
    """A verified transaction with its envelope bytes and id."""

    tx: Transaction
    envelope: bytes
    id: bytes

    @property
    def signer(self) -> str:
        """The account that signed (and is debited by) the transaction."""
        return signer_of(self.tx)


def tx_id(envelope: bytes) -> bytes:
    """A transaction's id: the SHA-256 of its envelope bytes."""
    return hashlib.sha256(envelope).digest()


def sign_tx(tx: Transaction, identity: Identity) -> SignedTx:
    """Sign ``tx`` with ``identity``, which must be the account it debits."""
    if signer_of(tx) != identity.peer_id:
        raise InvalidTransactionError(
            f"{type(tx).__name__} must be signed by {signer_of(tx)[-8:]}, "
            f"not {identity.peer_id[-8:]}")
    envelope = encode(seal(tx, identity))
    return SignedTx(tx, envelope, tx_id(envelope))


def decode_tx(envelope: bytes) -> SignedTx:
    """Decode and verify a transaction envelope from the network or the disk.

    Raises ``InvalidTransactionError`` for anything malformed, a bad signature, a
    signer that is not the debited account, or a non-transaction message. Checks that need
    the ledger's state (balances, nonces) are ``LedgerState.apply()``'s.
    """
    try:
        signed = decode(envelope, expect=Signed)
        tx = unseal(signed)
    except ProtocolError as exc:
        raise InvalidTransactionError(f"malformed or badly signed transaction: {exc}") from None
    if not isinstance(tx, _TX_TYPES):
        raise InvalidTransactionError(f"not a transaction: {type(tx).__name__}")
    if signed.signer != signer_of(tx):
        raise InvalidTransactionError(
            f"{type(tx).__name__} signed by {signed.signer[-8:]}, "
            f"but it debits {signer_of(tx)[-8:]}")
    return SignedTx(tx, envelope, tx_id(envelope))
