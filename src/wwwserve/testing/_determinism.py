"""Make trio's scheduler reproducible for a seed.

Trio runs each batch of ready tasks in an order drawn from its own unseeded RNG, and breaks
ties between equal deadlines by object identity. Under Hypothesis, trio switches to a mode
that first sorts each batch by task creation order, then shuffles it with that RNG; seeding the
RNG then makes the whole schedule a function of the seed. This module turns that mode on
outside Hypothesis. It touches two private names of trio; if they ever disappear, runs are
still correct, only no longer bit-for-bit reproducible (and a warning says so).
"""

from __future__ import annotations

import logging
import random
from typing import Any

logger = logging.getLogger(__name__)


def seed_trio_scheduler(seed: int) -> bool:
    """Seed trio's task scheduler; return False if this trio version does not allow it."""
    try:
        from trio._core import _run
    except ImportError:  # pragma: no cover - depends on trio internals
        return False
    rng: Any = getattr(_run, "_r", None)
    if not isinstance(rng, random.Random) or not hasattr(_run, "_ALLOW_DETERMINISTIC_SCHEDULING"):
        logger.warning("this trio version cannot be seeded; runs will not be reproducible")
        return False
    _run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    rng.seed(seed)
    return True
