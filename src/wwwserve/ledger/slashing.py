"""Equivocation evidence: two signed statements of one account that no honest node makes.

- **block**: two ``BlockHeader`` s one proposer signed for the same slot (two
  different blocks). An honest proposer signs one block per slot and records it before it
  sends it anywhere.
- **vote**: two finality votes of one voter that ``slashable()`` calls
  conflicting (two targets at one height, or one link surrounding the other).

Evidence is sans-IO and checked from its own bytes alone (signatures and fields), so every
replica decides the same. A block proposer includes the evidence it has seen
(``evidence``); applying it slashes the offender once per offence (see
``slash()``): a share of its stake and unbonding credit is burned
(nobody gains it, so reporting oneself gains nothing) and the rest of its stake is moved
to unbonding, so it stops proposing and being drawn at once. The two parts of an evidence
message are kept in a canonical order, so the same offence is the same bytes wherever it
was seen.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ..errors import InvalidBlockError, InvalidVoteError, ProtocolError
from ..wire import Message, decode, encode, message
from .block import Block, BlockHeader, header_id, header_of, header_signature_ok
from .finality import SignedVote, decode_vote, slashable

__all__ = ["Equivocation", "Offence", "block_equivocation", "check_evidence",
           "vote_equivocation"]

KINDS = ("block", "vote")


@message("equivocation", 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class Equivocation(Message):
    """Evidence of an equivocation (see the module docs): ``first`` and ``second`` are two
    encoded block headers (``kind`` "block") or two vote envelopes ("vote"), in byte order."""

    kind: str
    first: bytes
    second: bytes


@dataclass(frozen=True, slots=True)
class Offence:
    """Who equivocated, and the key under which the offence is slashed once."""

    offender: str
    key: tuple[str, str, int]


def _pair(kind: str, a: bytes, b: bytes) -> bytes:
    first, second = sorted((a, b))
    return encode(Equivocation(kind=kind, first=first, second=second))


def block_equivocation(a: Block, b: Block) -> bytes:
    """Evidence that ``a`` and ``b`` (one proposer, one slot) were both signed."""
    return _pair("block", encode(header_of(a)), encode(header_of(b)))


def vote_equivocation(a: SignedVote, b: SignedVote) -> bytes:
    """Evidence that two conflicting votes of one voter were both signed."""
    return _pair("vote", a.envelope, b.envelope)


def check_evidence(data: bytes, network: str) -> Offence:
    """Verify evidence of ``network``; raises ``InvalidBlockError`` naming what is
    wrong (malformed, another network, not one account, not conflicting, bad signature)."""
    return _check(data, network)


@functools.lru_cache(maxsize=1024)
def _check(data: bytes, network: str) -> Offence:
    try:
        ev = decode(data, expect=Equivocation)
    except ProtocolError as exc:
        raise InvalidBlockError(f"malformed evidence: {exc}") from None
    if ev.kind not in KINDS or ev.first >= ev.second:
        raise InvalidBlockError("evidence of an unknown kind, or not in canonical order")
    if ev.kind == "block":
        try:
            a = decode(ev.first, expect=BlockHeader)
            b = decode(ev.second, expect=BlockHeader)
        except ProtocolError as exc:
            raise InvalidBlockError(f"malformed block header in evidence: {exc}") from None
        if a.network != network or b.network != network:
            raise InvalidBlockError("evidence of another network")
        if a.proposer != b.proposer or a.slot != b.slot or header_id(a) == header_id(b):
            raise InvalidBlockError("the headers are not two blocks of one proposer and slot")
        if not (header_signature_ok(a) and header_signature_ok(b)):
            raise InvalidBlockError("a header in the evidence is not signed by its proposer")
        return Offence(a.proposer, ("block", a.proposer, a.slot))
    try:
        va, vb = decode_vote(ev.first).vote, decode_vote(ev.second).vote
    except InvalidVoteError as exc:
        raise InvalidBlockError(f"a vote in the evidence: {exc}") from None
    if va.network != network or vb.network != network:
        raise InvalidBlockError("evidence of another network")
    if not slashable(va, vb):
        raise InvalidBlockError("the votes do not conflict")
    return Offence(va.voter, ("vote", va.voter, min(va.target_height, vb.target_height)))
