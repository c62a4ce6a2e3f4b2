"""The per-request backoff of failed local engines (sans-IO)."""

from __future__ import annotations

import random

from wwwserve.engines import EngineLoad
from wwwserve.errors import EngineError
from wwwserve.market.backoff import Backoff, BackoffParams
from wwwserve.market.policy import ModelView, NodeView


def view(*names: str) -> NodeView:
    return NodeView(tuple(ModelView(n, EngineLoad(), 0.6) for n in names), 0, 10.0, 0.0)


def test_rests_grow_exponentially_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(1)
    b = Backoff(BackoffParams(attempts=10, base=0.5, cap=3.0))
    rests = [b.failed("m", EngineError("500"), 0.0, rng) for _ in range(6)]
    for n, rest in enumerate(rests):
        ceiling = min(3.0, 0.5 * 2 ** n)
        assert ceiling / 2 <= rest <= ceiling
    assert max(rests) <= 3.0


def test_retry_after_is_honoured_within_the_cap() -> None:
    b = Backoff(BackoffParams(cap=8.0))
    assert b.failed("m", EngineError("429", status=429, retry_after=2.0), 0.0,
                    random.Random(0)) == 2.0
    assert b.failed("m", EngineError("429", status=429, retry_after=600.0), 0.0,
                    random.Random(0)) == 8.0


def test_a_resting_model_is_hidden_until_it_may_be_tried_and_none_once_exhausted() -> None:
    b = Backoff(BackoffParams(attempts=2))
    v = view("a", "b")
    assert b.filter(v, 0.0) is v and b.wake_at(0.0) is None
    rest = b.failed("a", EngineError("boom"), 10.0, random.Random(0))
    assert [m.name for m in b.filter(v, 10.0).models] == ["b"]
    assert b.wake_at(10.0) == 10.0 + rest
    assert [m.name for m in b.filter(v, 10.0 + rest).models] == ["a", "b"]
    b.failed("b", EngineError("boom"), 11.0, random.Random(0))
    assert b.exhausted
    assert b.filter(v, 1e9).models == () and b.wake_at(11.0) is None


def test_the_user_gets_the_engines_verdict() -> None:
    b = Backoff()
    b.failed("m", EngineError("engine answered 429: slow down", status=429, retry_after=3.0),
             0.0, random.Random(0))
    err = b.error("gave up")
    assert (err.status, err.retry_after) == (429, 3.0) and "slow down" in str(err)
    b.failed("m", EngineError("engine answered 503: overloaded", status=503), 0.0,
             random.Random(0))
    err = b.error("gave up")
    assert (err.status, err.retry_after) == (502, None) and "overloaded" in str(err)
