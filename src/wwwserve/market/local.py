"""What a node's two market roles share: its models, policy, credit, counters and speeds.

The requester's placement (:mod:`.requester`) and the executor's service (:mod:`.executor`)
both decide from the same :class:`~.policy.NodeView` of the same engines, count into the
same counters, and wake the requests waiting for capacity (:meth:`Local.notify`).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from ..engines import CompletionRequest, Emit, Engine, Usage, with_defaults
from ..membership import PeerInfo, PeerStatus
from .credit import CreditAccount
from .policy import ModelView, NodeView, Policy
from .speed import SpeedBook

__all__ = ["Local", "LocalModel", "serves"]


@dataclass(slots=True)
class LocalModel:
    """A model this node serves: its name, engine, target token usage and its provider's
    sampling defaults (``gen_params``: applied where a request does not set a field)."""

    name: str
    engine: Engine
    target_token_usage: float = 0.6
    defaults: Mapping[str, Any] = field(default_factory=dict)

    async def generate(self, request: CompletionRequest, emit: Emit) -> Usage:
        """Run ``request`` on this model's engine, with this provider's defaults."""
        return await self.engine.generate(with_defaults(request, self.defaults), emit)


def serves(info: PeerInfo, model: str) -> bool:
    """True if the peer ``info`` advertises ``model`` (any model for ``auto``)."""
    return any(model in ("auto", m.model) for m in info.models)


class Local:
    """This node's side of every decision (see the module docs)."""

    def __init__(self, *, peer_id: str, models: list[LocalModel], policy: Policy,
                 credit: CreditAccount, rng: random.Random,
                 peers: Callable[[], Mapping[str, PeerInfo]]) -> None:
        self.peer_id = peer_id
        self.models = models
        self.policy = policy
        self.credit = credit
        self.rng = rng
        self.peers = peers
        self.stats: Counter[str] = Counter()
        self.speeds = SpeedBook(peer_id)
        #: this node's users' requests waiting for a decision
        self.waiting = 0
        #: set once the node is stopping: waiting requests end, no new ones start
        self.closed = False
        self._changed = trio.Event()

    @property
    def changed(self) -> trio.Event:
        """Set at the next :meth:`notify`."""
        return self._changed

    def notify(self) -> None:
        """Something changed (capacity freed, a peer's state): waiting requests re-decide."""
        self._changed.set()
        self._changed = trio.Event()

    def matching(self, model: str) -> list[LocalModel]:
        """The local models a request for ``model`` may run on."""
        return [m for m in self.models
                if model in ("auto", m.name) or model in m.engine.models]

    def by_name(self, name: str) -> LocalModel:
        """The local model called ``name``."""
        return next(m for m in self.models if m.name == name)

    def view(self, model: str = "auto") -> NodeView:
        """What the policy sees for a request for ``model``."""
        views = []
        for m in self.matching(model):
            load = m.engine.load()
            if load.healthy:
                views.append(ModelView(m.name, load, m.target_token_usage))
        return NodeView(tuple(views), self.waiting, self.credit.balance(), self.credit.stake(),
                        speed_ratio=self.speed_ratio(model))

    def speed_ratio(self, model: str = "auto") -> float:
        """How many times faster than our own engine the fastest live peer serving
        ``model`` has answered us (1.0 while either is unmeasured, or none is faster)."""
        live = self.peers()

        def fast_candidate(peer: str) -> bool:
            info = live.get(peer)
            return info is not None and info.status is PeerStatus.ALIVE and serves(info, model)

        return self.speeds.ratio(fast_candidate)
