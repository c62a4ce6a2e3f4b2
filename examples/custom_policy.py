"""A custom dispatch policy: keep headroom for your own users.

Use it from a node config (with this directory on ``PYTHONPATH``)::

    server_params:
      policy: custom_policy:HeadroomPolicy

It behaves like the default policy, except that it accepts peers' requests only while every
local model is under *half* its target token usage, and it stakes a fixed share of its
credit whenever it accepts at all (more stake: chosen more often by peers).
"""

from __future__ import annotations

import random

from wwwserve.config import ServerParams
from wwwserve.market import DefaultPolicy, NodeView


class HeadroomPolicy(DefaultPolicy):
    """Default decisions, but peers only get the first half of each model's capacity."""

    def __init__(self, params: ServerParams, *, headroom: float = 0.5,
                 stake_share: float = 0.3) -> None:
        super().__init__(params)
        self.headroom = headroom
        self.stake_share = stake_share

    def accept(self, view: NodeView, rng: random.Random) -> str | None:
        """Accept (with ``accept_frequency``) onto a model well under its target."""
        if view.own_waiting or rng.random() >= self.accept_frequency:
            return None
        roomy = [m for m in view.models
                 if m.load.token_usage < self.headroom * m.target_token_usage
                 and m.load.queued == 0]
        return min(roomy, key=lambda m: m.load.token_usage).name if roomy else None

    def target_stake(self, view: NodeView) -> float:
        """A fixed share of all credit while we accept anything, else nothing."""
        if self.accept_frequency <= 0 or not view.models:
            return 0.0
        return self.stake_share * (view.balance + view.stake)
