"""What a node's two market roles share: its models, policy, credit, counters and speeds.

The requester's placement (``requester``) and the executor's service (``executor``)
both decide from the same ``NodeView`` of the same engines, count into the
same counters, and wake the requests waiting for capacity (``Local.notify()``).
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from ..engines import CompletionRequest, Emit, Engine, EngineLoad, Usage, with_defaults
from ..membership import PeerInfo, PeerStatus
from .credit import CreditAccount
from .policy import ModelView, NodeView, Policy
from .speed import SpeedBook

__all__ = ["Local", "LocalModel", "serves"]


#: the share of an engine's KV pool one admitted request is assumed to take until the
#: engine's readings have shown one (then: the mean usage per running request it read)
ADMIT_USAGE_PRIOR = 0.1


@dataclass(slots=True)
class LocalModel:
    """A model this node serves: its name, engine, target token usage and its provider's
    sampling defaults (``gen_params``: applied where a request does not set a field).

    Its ``load()`` is the engine's last reading plus what was admitted since it
    (``count_admitted``): an engine's load is read every ``scrape_interval``, and a burst
    decided on one reading would all land here. Each request admitted (``admit()``, or
    by ``generate()``) counts as one more running request holding the usage that a
    running request held on the engine's readings, or as one more queued request once
    that estimate is at the target; its count ends when it finishes or when a new reading
    comes (which shows it, if it still runs).
    """

    name: str
    engine: Engine
    target_token_usage: float = 0.6
    defaults: Mapping[str, Any] = field(default_factory=dict)
    count_admitted: bool = True
    _reading: EngineLoad | None = field(default=None, init=False, repr=False)
    #: admissions since the reading: token -> counted as queued
    _since: dict[int, bool] = field(default_factory=dict, init=False, repr=False)
    _per_request: float = field(default=ADMIT_USAGE_PRIOR, init=False, repr=False)
    _tokens: Iterator[int] = field(default_factory=itertools.count, init=False, repr=False)

    def load(self) -> EngineLoad:
        """The engine's last reading, with the requests admitted since it counted in."""
        reading = self.engine.load()
        if reading is not self._reading:  # a new reading: it shows what still runs
            self._reading = reading
            self._since.clear()
            if reading.running > 0 and reading.token_usage > 0:
                seen = reading.token_usage / reading.running
                self._per_request = 0.5 * (self._per_request + seen)
        if not self._since or not self.count_admitted or not reading.healthy:
            return reading
        queued = sum(self._since.values())
        running = len(self._since) - queued
        return replace(reading, running=reading.running + running,
                       queued=reading.queued + queued,
                       token_usage=min(1.0, reading.token_usage + running * self._per_request))

    def admit(self) -> int:
        """Count one request admitted to the engine now; returns the token that
        ``release()`` takes when it is done (or was never sent)."""
        load = self.load()
        token = next(self._tokens)
        self._since[token] = not (load.token_usage < self.target_token_usage
                                  and load.queued == 0)
        return token

    def release(self, token: int) -> None:
        """An admitted request is done (a no-op once a newer reading replaced its count)."""
        self._since.pop(token, None)

    async def generate(self, request: CompletionRequest, emit: Emit, *,
                       admitted: int | None = None) -> Usage:
        """Run ``request`` on this model's engine, with this provider's defaults
        (``admitted``: its ``admit()`` token, if it was admitted before)."""
        token = self.admit() if admitted is None else admitted
        try:
            return await self.engine.generate(with_defaults(request, self.defaults), emit)
        finally:
            self.release(token)


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
        """Set at the next ``notify()``."""
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
            load = m.load()
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
