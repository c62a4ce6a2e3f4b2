"""Wire messages of the market protocols (probe and offload)."""

from __future__ import annotations

from dataclasses import dataclass

from ..wire import Message, message

__all__ = ["Offload", "Probe", "ProbeReply"]

PROBE_PROTOCOL = "/wwwserve/probe/1.0.0"
#: 2.0.0: requests carry their pass-through fields, chunks the engine's whole answer
OFFLOAD_PROTOCOL = "/wwwserve/offload/2.0.0"


@message("probe", 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class Probe(Message):
    """Would you take this request now?"""

    request_id: str
    model: str
    prompt_tokens: int
    max_tokens: int
    route: tuple[str, ...] = ()


@message("probe-reply", 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeReply(Message):
    """Yes (with the model that would run it) or no (with why)."""

    accept: bool
    model: str = ""
    reason: str = ""


@message("offload", 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class Offload(Message):
    """Run this request (an encoded CompletionRequest); ``route`` lists the nodes it passed.

    The executor answers with a ``ProbeReply`` first, then the answer's chunks. With
    ``offer`` the request was not probed first: the executor applies its accept policy and
    may refuse (``ProbeReply(accept=False)``, nothing more), which saves the requester the
    probe's round trip whenever the peer accepts.
    """

    request: bytes
    route: tuple[str, ...] = ()
    hops: int = 1
    offer: bool = False
