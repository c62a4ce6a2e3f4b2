"""Blocks, the genesis of a network, and the proposer lottery.

A ``Block`` names its ``parent`` by id (``block_id()``: the SHA-256 of its
``BlockHeader`` without the signature), carries transaction envelopes, finality votes,
equivocation evidence, the state root after applying them, and the proposer's signature
over the header (which holds the hash of the contents), so that two blocks one proposer
signed for one slot are proven by two small headers.

**Proposer lottery.** Time is cut into slots of ``slot_length`` seconds from the genesis
time. The proposer of slot ``s`` on top of parent ``p`` is drawn by ``leader()``: one
account, with probability proportional to its stake in the state after ``p``, from a hash
of ``(p, s)``. Every node can recompute it, so a block by anyone else is rejected. A slot
whose proposer is offline stays empty; the next slot draws again. (Known limitation, as in
early proof-of-stake designs: a proposer can try orderings of its block's transactions to
influence the next draws; a VRF-based lottery would close that.)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, IdentityError
from ..identity import Identity, canonical_bytes, public_key_from_peer_id, verify
from ..wire import Message, message, signable_bytes
from .finality import SignedVote
from .state import LedgerState, Rules
from .tx import SignedTx, credits, micro

__all__ = ["Allocation", "Block", "BlockHeader", "Genesis", "block_id", "header_id",
           "header_of", "header_signature_ok", "leader", "make_block", "sign_block"]


@message("block", 2)
@dataclass(frozen=True, slots=True, kw_only=True)
class Block(Message):
    """One block of the chain (see the module docs)."""

    network: str
    height: int
    parent: bytes
    slot: int
    proposer: str
    txs: tuple[bytes, ...]
    state_root: bytes
    #: finality vote envelopes (``finality``)
    votes: tuple[bytes, ...] = ()
    #: equivocation evidence (``slashing``) the proposer includes
    evidence: tuple[bytes, ...] = ()
    signature: bytes = b""


@message("block-header", 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class BlockHeader(Message):
    """What a proposer signs: a block without its contents, which ``body`` (the SHA-256 of
    transactions, votes and evidence) stands for. Two headers one proposer signed for one
    slot are the evidence of its equivocation, small enough to carry in any block."""

    network: str
    height: int
    parent: bytes
    slot: int
    proposer: str
    state_root: bytes
    body: bytes
    signature: bytes = b""


@functools.lru_cache(maxsize=2048)
def _body_hash(txs: tuple[bytes, ...], votes: tuple[bytes, ...],
               evidence: tuple[bytes, ...]) -> bytes:
    return hashlib.sha256(canonical_bytes([list(txs), list(votes), list(evidence)])).digest()


def header_of(block: Block) -> BlockHeader:
    """The signed header of ``block``."""
    return BlockHeader(network=block.network, height=block.height, parent=block.parent,
                       slot=block.slot, proposer=block.proposer, state_root=block.state_root,
                       body=_body_hash(block.txs, block.votes, block.evidence),
                       signature=block.signature)


def header_id(header: BlockHeader) -> bytes:
    """The id of the block a header stands for."""
    return hashlib.sha256(signable_bytes(header)).digest()


def block_id(block: Block) -> bytes:
    """The block's id: SHA-256 of its header's canonical bytes without the signature."""
    return header_id(header_of(block))


def header_signature_ok(header: BlockHeader) -> bool:
    """True if the header is signed by its proposer."""
    return verify(header.proposer, signable_bytes(header), header.signature)


def block_signature_ok(block: Block) -> bool:
    """True if the block is signed by its proposer."""
    return header_signature_ok(header_of(block))


def make_block(identity: Identity, *, network: str, height: int, parent: bytes, slot: int,
               txs: Sequence[SignedTx], state_root: bytes,
               votes: Sequence[SignedVote] = (), evidence: Sequence[bytes] = ()) -> Block:
    """A block proposed and signed by ``identity``."""
    unsigned = Block(network=network, height=height, parent=parent, slot=slot,
                     proposer=identity.peer_id, txs=tuple(t.envelope for t in txs),
                     state_root=state_root, votes=tuple(v.envelope for v in votes),
                     evidence=tuple(evidence))
    return sign_block(unsigned, identity)


def sign_block(block: Block, identity: Identity) -> Block:
    """``block`` signed by ``identity`` (over its header)."""
    unsigned = dataclasses.replace(block, signature=b"")
    return dataclasses.replace(block, signature=identity.sign(signable_bytes(header_of(unsigned))))


def leader(seed: bytes, slot: int, stakes: Mapping[str, int]) -> str | None:
    """The account that may propose ``slot`` on top of the block with id ``seed``."""
    total = sum(s for s in stakes.values() if s > 0)
    if total <= 0:
        return None
    digest = hashlib.sha256(b"wwwserve/leader/1" + seed + slot.to_bytes(8, "big", signed=True))
    point = int.from_bytes(digest.digest(), "big") % total
    for account in sorted(stakes):
        s = stakes[account]
        if s <= 0:
            continue
        if point < s:
            return account
        point -= s
    raise AssertionError("unreachable: the point is below the total stake")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class Allocation:
    """An account's credit at genesis (micro-credits)."""

    account: str
    balance: int
    stake: int = 0

    @classmethod
    def of_credit(cls, account: str, credit: float, staked: float = 0.0) -> Allocation:
        """``credit`` credits in all, ``staked`` of them staked (as ``ledger_params`` says)."""
        return cls(account, micro(credit) - micro(staked), micro(staked))


@dataclass(frozen=True, slots=True)
class Genesis:
    """A network's first state and its ledger rules.

    ``time`` is the Unix time of slot 0; ``finality_depth`` the distance in blocks between
    two finality checkpoints (see ``finality``).
    """

    network: str
    time: float
    allocations: tuple[Allocation, ...]
    slot_length: float = 2.0
    unbonding_blocks: int = 30
    join_grant: int = 0
    finality_depth: int = 4
    #: duel settlement amounts (see ``Rules``)
    duel_reward: int = 1_000_000
    duel_loser_ppm: int = 1_000_000
    duel_minority_ppm: int = 200_000
    duel_silent_ppm: int = 50_000
    #: share of an equivocator's stake and unbonding credit burned (ppm; ``slashing``)
    equivocation_ppm: int = 100_000
    id: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for a in self.allocations:
            if a.account in seen:
                raise ValueError(f"account {a.account} is allocated twice")
            seen.add(a.account)
            try:
                public_key_from_peer_id(a.account)
            except IdentityError:
                raise ValueError(f"not a valid peer id: {a.account!r}") from None
            if a.balance < 0 or a.stake < 0:
                raise ValueError(f"negative allocation for {a.account}")
        if not self.slot_length > 0 or not math.isfinite(self.slot_length):
            raise ValueError(f"slot_length must be positive, got {self.slot_length}")
        if self.unbonding_blocks < 0 or self.join_grant < 0 or self.finality_depth < 1:
            raise ValueError("unbonding_blocks and join_grant must be >= 0, "
                             "finality_depth >= 1")
        if self.duel_reward < 0 or not all(0 <= p <= 1_000_000 for p in (
                self.duel_loser_ppm, self.duel_minority_ppm, self.duel_silent_ppm,
                self.equivocation_ppm)):
            raise ValueError("duel reward must be >= 0, duel and equivocation penalties "
                             "in [0, 1]")
        if sum(a.stake for a in self.allocations) <= 0:
            raise ValueError("somebody must stake at genesis, or no block can be proposed")
        object.__setattr__(self, "id", hashlib.sha256(canonical_bytes(self._plain())).digest())

    @property
    def rules(self) -> Rules:
        """The ledger rules this genesis fixes."""
        return Rules(self.network, self.unbonding_blocks, self.join_grant,
                     duel_reward=self.duel_reward, duel_loser_ppm=self.duel_loser_ppm,
                     duel_minority_ppm=self.duel_minority_ppm,
                     duel_silent_ppm=self.duel_silent_ppm,
                     equivocation_ppm=self.equivocation_ppm)

    def state(self) -> LedgerState:
        """The state at height 0."""
        return LedgerState(self.rules, {a.account: a.balance for a in self.allocations},
                           {a.account: a.stake for a in self.allocations})

    def slot_at(self, unix_time: float) -> int:
        """The slot running at ``unix_time``."""
        return math.floor((unix_time - self.time) / self.slot_length)

    def _plain(self) -> dict[str, Any]:
        return {"network": self.network, "time": self.time, "slot_length": self.slot_length,
                "unbonding_blocks": self.unbonding_blocks, "join_grant": self.join_grant,
                "finality_depth": self.finality_depth,
                "duel": [self.duel_reward, self.duel_loser_ppm, self.duel_minority_ppm,
                         self.duel_silent_ppm],
                "equivocation": self.equivocation_ppm,
                "allocations": [[a.account, a.balance, a.stake] for a in self.allocations]}

    # ---- files --------------------------------------------------------------------------
    def to_yaml(self) -> str:
        """The genesis as YAML (amounts in credits)."""
        doc = {"network": self.network, "time": self.time, "slot_length": self.slot_length,
               "unbonding_blocks": self.unbonding_blocks,
               "join_grant": credits(self.join_grant), "finality_depth": self.finality_depth,
               "duel": {"reward": credits(self.duel_reward),
                        "loser_penalty": self.duel_loser_ppm / 1e6,
                        "minority_penalty": self.duel_minority_ppm / 1e6,
                        "silent_penalty": self.duel_silent_ppm / 1e6},
               "equivocation_penalty": self.equivocation_ppm / 1e6,
               "allocations": [{"account": a.account, "credit": credits(a.balance + a.stake),
                                "staked": credits(a.stake)} for a in self.allocations]}
        return str(yaml.safe_dump(doc, sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> Genesis:
        """Read a genesis file; any problem is a ``ConfigError`` naming the key."""
        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the genesis: {exc}") from None
        return cls.from_dict(doc, str(path))

    @classmethod
    def from_dict(cls, doc: Any, where: str = "genesis") -> Genesis:
        """Build from a parsed YAML document (see ``to_yaml()``)."""
        def bad(key: str, allowed: str, got: Any) -> ConfigError:
            return ConfigError(f"{where}: {key}: {allowed}, got {got!r}")

        if not isinstance(doc, dict):
            raise bad("(top level)", "must be a mapping", doc)
        known = {"network", "time", "slot_length", "unbonding_blocks", "join_grant",
                 "finality_depth", "duel", "equivocation_penalty", "allocations"}
        for key in doc:
            if key not in known:
                raise bad(str(key), f"unknown key (allowed: {', '.join(sorted(known))})", key)
        network = doc.get("network")
        if not isinstance(network, str) or not network:
            raise bad("network", "must be a non-empty string", network)
        number = (int, float)
        for key in ("time", "slot_length", "join_grant"):
            if key in doc and (not isinstance(doc[key], number) or isinstance(doc[key], bool)):
                raise bad(key, "must be a number", doc[key])
        for key in ("unbonding_blocks", "finality_depth"):
            if key in doc and (not isinstance(doc[key], int) or isinstance(doc[key], bool)):
                raise bad(key, "must be an integer", doc[key])
        allocs = doc.get("allocations")
        if not isinstance(allocs, list) or not allocs:
            raise bad("allocations", "must be a non-empty list", allocs)
        out = []
        for i, a in enumerate(allocs):
            if not isinstance(a, dict) or set(a) - {"account", "credit", "staked"} \
                    or not isinstance(a.get("account"), str):
                raise bad(f"allocations[{i}]", "must be {account, credit, staked}", a)
            credit, staked = a.get("credit", 0), a.get("staked", 0)
            if not all(isinstance(v, number) and not isinstance(v, bool) and v >= 0
                       for v in (credit, staked)) or staked > credit:
                raise bad(f"allocations[{i}]", "needs 0 <= staked <= credit", a)
            out.append(Allocation(a["account"], micro(credit) - micro(staked), micro(staked)))
        duel = doc.get("duel", {})
        duel_keys = {"reward", "loser_penalty", "minority_penalty", "silent_penalty"}
        if not isinstance(duel, dict) or set(duel) - duel_keys:
            raise bad("duel", f"must be a mapping with keys among {sorted(duel_keys)}", duel)
        for key, value in duel.items():
            if not isinstance(value, number) or isinstance(value, bool) or value < 0 \
                    or (key != "reward" and value > 1):
                raise bad(f"duel.{key}", "must be a number >= 0 (a penalty: in [0, 1])",
                          value)
        equivocation = doc.get("equivocation_penalty", 0.1)
        if not isinstance(equivocation, number) or isinstance(equivocation, bool) \
                or not 0 <= equivocation <= 1:
            raise bad("equivocation_penalty", "must be a number in [0, 1]", equivocation)
        try:
            return cls(network=network, time=float(doc.get("time", 0.0)),
                       allocations=tuple(out),
                       slot_length=float(doc.get("slot_length", 2.0)),
                       unbonding_blocks=doc.get("unbonding_blocks", 30),
                       join_grant=micro(doc.get("join_grant", 0)),
                       finality_depth=doc.get("finality_depth", 4),
                       duel_reward=micro(duel.get("reward", 1.0)),
                       duel_loser_ppm=round(duel.get("loser_penalty", 1.0) * 1e6),
                       duel_minority_ppm=round(duel.get("minority_penalty", 0.2) * 1e6),
                       duel_silent_ppm=round(duel.get("silent_penalty", 0.05) * 1e6),
                       equivocation_ppm=round(equivocation * 1e6))
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
