"""Simulation support: deterministic virtual-time runs of the real node code."""

from __future__ import annotations

from ._determinism import seed_trio_scheduler

__all__ = ["seed_trio_scheduler"]
