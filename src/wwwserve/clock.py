"""Clocks as inputs.

Behaviour is timed with trio's clock (``trio.current_time()``), which is virtual in
simulations. Wall-clock timestamps that go into signed records (heartbeats, transactions) come
from an injected ``WallClock``: ``system_wall_clock()`` in the real world,
``trio_wall_clock()`` in simulations, so a simulated run never reads the host's clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

__all__ = ["SIM_EPOCH", "WallClock", "system_wall_clock", "trio_wall_clock"]

WallClock = Callable[[], float]
"""A function returning seconds since the Unix epoch."""

SIM_EPOCH = 1_767_225_600.0
"""2026-01-01T00:00:00Z: the wall-clock time at virtual time zero in simulations."""


def system_wall_clock() -> float:
    """The host's wall clock (the one place wwwserve reads it)."""
    return time.time()


def trio_wall_clock(epoch: float = SIM_EPOCH) -> WallClock:
    """A wall clock that follows trio's (possibly virtual) clock from ``epoch``."""

    def now() -> float:
        return epoch + trio.current_time()

    return now
