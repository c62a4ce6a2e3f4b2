"""The dispatcher: one node's market roles, composed.

- ``Requester``: where each of this node's users' requests runs (decide,
  offer and probe, attempt, pay);
- ``Executor``: peers' probes and offloaded requests served here (grants,
  per-peer limits, keepalives, receipts);
- ``Local``: what both share (models, policy, credit, counters, speeds);
- the wire order of both streams: ``protocol``; duels: ``wwwserve.duel.race``.

Every knob is a field of ``DispatchParams`` (the config's ``dispatch``
section).
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Callable, Mapping

import trio

from .._compat import TaskStatus
from ..config import DispatchParams
from ..engines import CompletionRequest, Emit, Usage
from ..identity import Identity
from ..membership import PeerInfo
from ..overlay import Overlay
from .credit import CreditAccount
from .executor import Executor
from .local import Local, LocalModel
from .policy import NodeView, Policy
from .requester import DuelRunner, Requester

__all__ = ["Dispatcher", "LocalModel"]


class Dispatcher:
    """Local / offload / queue decisions and the executor's service of one node."""

    def __init__(
        self,
        *,
        overlay: Overlay,
        peer_id: str,
        peers: Callable[[], Mapping[str, PeerInfo]],
        models: list[LocalModel],
        policy: Policy,
        credit: CreditAccount,
        rng: random.Random,
        params: DispatchParams | None = None,
        stakes: Callable[[], Mapping[str, float]] | None = None,
        duels: DuelRunner | None = None,
        identity: Identity | None = None,
        id_prefix: str | None = None,
    ) -> None:
        self.params = params if params is not None else DispatchParams()
        self.local = Local(peer_id=peer_id, models=models, policy=policy, credit=credit,
                           rng=rng, peers=peers)
        self.requester = Requester(self.local, overlay=overlay, params=self.params,
                                   stakes=stakes, duels=duels, id_prefix=id_prefix)
        self.executor = Executor(self.local, overlay=overlay, params=self.params,
                                 identity=identity)

    # ---- state --------------------------------------------------------------------------
    @property
    def models(self) -> list[LocalModel]:
        """The models this node serves."""
        return self.local.models

    @property
    def policy(self) -> Policy:
        """The node's policy."""
        return self.local.policy

    @property
    def stats(self) -> Counter[str]:
        """Decision and event counters (``local``, ``offloaded``, ``accepted``, ...)."""
        return self.local.stats

    @property
    def speeds(self) -> dict[str, float]:
        """Decode speeds (tokens per second) by engine owner (our peer id: our engine)."""
        return self.local.speeds.speeds

    @property
    def offload_delays(self) -> deque[float]:
        """Seconds from a request's arrival to its dispatch to a peer (recent ones)."""
        return self.requester.offload_delays

    @property
    def running_for_peers(self) -> int:
        """Peers' requests running here now."""
        return self.executor.running_for_peers

    def notify(self) -> None:
        """Something changed (capacity freed, a peer's state): waiting requests re-decide."""
        self.local.notify()

    def view(self, model: str = "auto") -> NodeView:
        """What the policy sees for a request for ``model``."""
        return self.local.view(model)

    def speed_ratio(self, model: str = "auto") -> float:
        """How many times faster than our own engine the fastest live peer serving
        ``model`` has answered us (see ``Local.speed_ratio <.local.Local.speed_ratio>()``)."""
        return self.local.speed_ratio(model)

    def network_models(self) -> set[str]:
        """Models served here or by any live peer."""
        return self.requester.network_models()

    async def submit(self, request: CompletionRequest, emit: Emit,
                     route: tuple[str, ...] = ()) -> Usage:
        """Serve ``request`` here or elsewhere; push its chunks to ``emit``."""
        return await self.requester.submit(request, emit, route)

    # ---- running ------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the protocols and re-target the stake every second."""
        local = self.local
        self.executor.serve()
        local.credit.set_stake(local.policy.target_stake(local.view()))
        task_status.started()
        try:
            while True:
                await trio.sleep(1.0)
                local.credit.set_stake(local.policy.target_stake(local.view()))
        finally:  # the node is stopping: requests still waiting or running here end now
            self.requester.close()
