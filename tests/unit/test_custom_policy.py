"""The example custom policy loads by dotted path from a config and decides as documented."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from wwwserve.config import ServerParams
from wwwserve.engines import EngineLoad
from wwwserve.errors import ConfigError
from wwwserve.market import ModelView, NodeView, get_policy

EXAMPLES = Path(__file__).parent.parent.parent / "examples"


@pytest.fixture
def examples_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))


def view(usage: float, own_waiting: int = 0) -> NodeView:
    return NodeView((ModelView("m", EngineLoad(token_usage=usage), 0.6),), own_waiting,
                    balance=70.0, stake=30.0)


@pytest.mark.usefixtures("examples_on_path")
def test_headroom_policy_accepts_only_under_half_its_target() -> None:
    policy = get_policy(ServerParams(policy="custom_policy:HeadroomPolicy",
                                     accept_frequency=1.0))
    assert type(policy).__name__ == "HeadroomPolicy"
    rng = random.Random(0)
    assert policy.accept(view(0.2), rng) == "m"
    assert policy.accept(view(0.4), rng) is None       # under target, but not under half
    assert policy.run_locally(view(0.4)) == "m"         # its own users still get it
    assert policy.accept(view(0.1, own_waiting=1), rng) is None
    assert policy.target_stake(view(0.9)) == pytest.approx(30.0)
    assert sys.modules["custom_policy"].HeadroomPolicy is type(policy)


def test_unknown_dotted_policy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot import 'no_such_module:Policy'"):
        get_policy(ServerParams(policy="no_such_module:Policy"))
