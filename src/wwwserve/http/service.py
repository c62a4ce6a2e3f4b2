"""What the gateway needs from a node: a small protocol and a frozen status snapshot.

The gateway (``gateway``) serves anything that offers ``NodeService``:
``submit`` a request, the ``models`` served in the network, whether it is ``healthy``, a
``NodeStatus`` snapshot for ``/status`` and ``/metrics``, and a JSON view of its ledger
for ``/ledger``. ``wwwserve.Node`` is one; a test can pass a fake of a few lines. The
gateway never reaches into a node's dispatcher, duels or chain, and ``http/`` imports
nothing from the node.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..engines import Emit, Usage
from ..engines.base import CompletionRequest

__all__ = ["LedgerStatus", "ModelStatus", "NodeService", "NodeStatus", "PeerRow", "RatingRow"]


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """One local model's engine load."""

    model: str
    token_usage: float
    running: int
    queued: int
    healthy: bool


@dataclass(frozen=True, slots=True)
class PeerRow:
    """One known peer, as this node last heard of it."""

    peer_id: str
    status: str
    stake: float
    credit: float
    models: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RatingRow:
    """A peer's duel record: its Bradley–Terry rating (Elo scale) and results."""

    rating: float
    wins: int
    losses: int
    ties: int


@dataclass(frozen=True, slots=True)
class LedgerStatus:
    """The ledger replica's heights and counters (cheap: taken on every /metrics scrape)."""

    height: int
    finalized_height: int
    pending: int
    events: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """Everything ``/status`` and ``/metrics`` show, taken at one moment."""

    peer_id: str
    name: str
    addresses: tuple[str, ...]
    credit: float
    stake: float
    models: tuple[ModelStatus, ...]
    peers: tuple[PeerRow, ...]
    #: the dispatcher's counters (decisions and events)
    dispatch: Mapping[str, int]
    #: seconds from a request's arrival to its dispatch to a peer (recent ones)
    offload_delays: tuple[float, ...]
    duels: Mapping[str, int]
    ratings: Mapping[str, RatingRow]
    ledger: LedgerStatus | None = None
    #: this node's payments for offloaded requests: ``submitted`` (signed and sent) and
    #: ``confirmed`` (on the best chain; without a ledger, settled at once)
    payments: Mapping[str, int] | None = None


class NodeService(Protocol):
    """What a gateway serves (see the module docs)."""

    async def submit(self, request: CompletionRequest, emit: Emit) -> Usage:
        """Serve ``request``, pushing its chunks to ``emit``."""
        ...

    def models(self) -> set[str]:
        """Models served here or by any live peer."""
        ...

    def healthy(self) -> bool:
        """True while this node can serve anything (a healthy engine or a live peer)."""
        ...

    def status(self) -> NodeStatus:
        """A snapshot of the node's state."""
        ...

    def ledger_json(self, last: int, *, accounts: bool = True) -> Mapping[str, Any] | None:
        """The ledger's JSON summary with its ``last`` blocks (and, with ``accounts``, every
        account); None without a ledger."""
        ...
