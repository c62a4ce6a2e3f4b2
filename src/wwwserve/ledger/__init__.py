"""The credit ledger: signed transactions in stake-elected, hash-chained blocks.

- ``tx``: transactions (payment, stake, unstake, join grant, skip, duel settlement),
  signed by the account they debit; amounts in integer micro-credits.
- ``slashing``: equivocation evidence (two blocks for one slot, conflicting votes).
- ``state``: balances, stakes, unbonding and nonces, the rules, apply and revert.
- ``block``: blocks, the genesis, and the stake-weighted proposer lottery.
- ``finality``: checkpoint votes and what they justify and finalize (sans-IO).
- ``chain``: fork choice, finality, reorganisation and the pending pool (sans-IO).
- ``store``: the append-only block file.
"""

from .block import Allocation, Block, Genesis, block_id, leader, make_block
from .chain import AddResult, Chain
from .finality import Checkpoint, FinalityState, InvalidVoteError, SignedVote, Vote
from .state import LedgerState, Rules, Undo
from .store import BlockStore, VoteRecord
from .tx import (
    UNIT,
    DuelSettlement,
    JoinGrant,
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
    signer_of,
    tx_id,
)

__all__ = [
    "UNIT",
    "AddResult",
    "Allocation",
    "Block",
    "BlockStore",
    "Chain",
    "Checkpoint",
    "DuelSettlement",
    "FinalityState",
    "Genesis",
    "InvalidVoteError",
    "JoinGrant",
    "LedgerState",
    "Payment",
    "Rules",
    "SignedTx",
    "SignedVote",
    "Skip",
    "Stake",
    "Transaction",
    "Undo",
    "Unstake",
    "Vote",
    "VoteRecord",
    "block_id",
    "credits",
    "decode_tx",
    "leader",
    "make_block",
    "micro",
    "sign_tx",
    "signer_of",
    "tx_id",
]
