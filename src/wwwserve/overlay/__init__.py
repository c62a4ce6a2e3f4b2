"""Peer-to-peer overlays: the ``Overlay`` interface and its two implementations.

``MemoryOverlay`` (on a ``MemoryNetwork``) runs in-process in virtual time;
``Libp2pOverlay`` runs on py-libp2p. ``Libp2pOverlay`` is imported lazily, so simulations
never pay for importing libp2p.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import (
    DEFAULT_IDLE_TIMEOUT,
    GossipMessage,
    Handler,
    Overlay,
    PeerEvent,
    PeerEventKind,
    ResponseSender,
    ResponseStream,
    Validator,
    peer_id_of,
)
from .memory import MAX_GOSSIP_SIZE, MemoryNetwork, MemoryOverlay, NetworkStats

if TYPE_CHECKING:
    from .libp2p import Libp2pOverlay

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "MAX_GOSSIP_SIZE",
    "GossipMessage",
    "Handler",
    "Libp2pOverlay",
    "MemoryNetwork",
    "MemoryOverlay",
    "NetworkStats",
    "Overlay",
    "PeerEvent",
    "PeerEventKind",
    "ResponseSender",
    "ResponseStream",
    "Validator",
    "peer_id_of",
]


def __getattr__(name: str) -> Any:
    if name == "Libp2pOverlay":
        from .libp2p import Libp2pOverlay

        return Libp2pOverlay
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
