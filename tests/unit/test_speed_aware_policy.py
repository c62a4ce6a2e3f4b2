"""The speed-aware policy: the authors' rule with targets scaled down by peers' speed."""

from __future__ import annotations

import random

import pytest

from wwwserve.config import ServerParams
from wwwserve.engines import EngineLoad
from wwwserve.market import DefaultPolicy, ModelView, NodeView, SpeedAwarePolicy, get_policy


def view(usage: float, ratio: float = 1.0) -> NodeView:
    return NodeView((ModelView("m", EngineLoad(token_usage=usage), 0.6),), 0,
                    balance=70.0, stake=30.0, speed_ratio=ratio)


def test_registered_and_the_default_rule_when_no_peer_is_faster() -> None:
    params = ServerParams(policy="speed_aware", accept_frequency=1.0)
    policy = get_policy(params)
    assert isinstance(policy, SpeedAwarePolicy)
    default = DefaultPolicy(params)
    for usage in (0.0, 0.2, 0.59, 0.6, 0.9):
        assert policy.run_locally(view(usage)) == default.run_locally(view(usage))
        assert policy.accept(view(usage), random.Random(1)) == default.accept(
            view(usage), random.Random(1))
        assert policy.target_stake(view(usage)) == pytest.approx(default.target_stake(view(usage)))


def test_a_node_twice_as_slow_as_a_peer_keeps_a_quarter_of_its_target() -> None:
    policy = SpeedAwarePolicy(ServerParams(accept_frequency=1.0))
    assert policy.run_locally(view(0.14, ratio=2.0)) == "m"  # under 0.6 / 2**2 = 0.15
    assert policy.run_locally(view(0.2, ratio=2.0)) is None
    assert policy.accept(view(0.2, ratio=2.0), random.Random(0)) is None
    assert policy.accept(view(0.1, ratio=2.0), random.Random(0)) == "m"
    # it stakes as if busier: usage 0.1 of a 0.15 target, against 0.1 of 0.6
    assert policy.target_stake(view(0.1, ratio=2.0)) < DefaultPolicy(
        ServerParams(accept_frequency=1.0)).target_stake(view(0.1))
