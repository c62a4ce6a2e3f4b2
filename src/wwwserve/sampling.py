"""Proof-of-Stake selection: weighted sampling without replacement (Efraimidis–Spirakis)."""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Mapping

__all__ = ["weighted_sample"]


def weighted_sample(weights: Mapping[str, float], k: int, rng: random.Random) -> list[str]:
    """Draw up to ``k`` distinct keys, each with chance proportional to its weight.

    Efraimidis and Spirakis (2006): give each item the key ``u ** (1 / w)`` with ``u`` uniform
    in (0, 1) and keep the ``k`` largest. Items of weight <= 0 are never drawn. Iterates in
    sorted key order so a seeded ``rng`` gives the same draw everywhere.
    """
    keyed = []
    for name in sorted(weights):
        w = weights[name]
        if w > 0 and math.isfinite(w):
            u = rng.random() or 1e-300
            keyed.append((math.log(u) / w, name))  # log of u**(1/w): same order
    return [name for _, name in heapq.nlargest(k, keyed)]
