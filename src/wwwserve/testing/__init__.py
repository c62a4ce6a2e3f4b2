"""Test helpers for integrators and for wwwserve's own tests.

- ``MemoryTestnet``: real nodes with simulated engines over an in-memory network, in
  trio's virtual time (deterministic for a seed; a minute of traffic in milliseconds).
- ``ProcessTestnet``: node processes with sim-engine processes on loopback, a private
  genesis, real libp2p (what ``wwwserve testnet`` runs).
- ``ChildProcess``: one ``python -m wwwserve ...`` child speaking JSON lines.
- ``signed_duel()``: a duel settlement with real signed evidence.

Installing wwwserve registers a pytest plugin (``wwwserve.testing.pytest_plugin``)
with two fixtures: ``memory_testnet`` (virtual time) and ``process_testnet`` (real
processes), each a factory used as ``async with memory_testnet(4, ...) as net:``.
"""

from __future__ import annotations

from ._determinism import seed_trio_scheduler
from ._duels import signed_duel
from ._memory import DEFAULT_MODEL, FAST_MEMBERSHIP, MemoryTestnet
from .processes import ChildProcess, ProcessTestnet, TestnetNode, rss_bytes

__all__ = [
    "DEFAULT_MODEL",
    "FAST_MEMBERSHIP",
    "ChildProcess",
    "MemoryTestnet",
    "ProcessTestnet",
    "TestnetNode",
    "rss_bytes",
    "seed_trio_scheduler",
    "signed_duel",
]
