"""pytest fixtures for networks of wwwserve nodes (registered when wwwserve is installed).

``memory_testnet``: a factory for ``MemoryTestnet`` that keeps
ledgers under the test's ``tmp_path``. The network runs in trio's virtual time, so the test
also takes pytest-trio's ``autojump_clock`` (pytest-trio only takes a clock from the test's
own arguments; without one, entering the testnet raises a ConfigError saying so)::

    async def test_offloading(memory_testnet, autojump_clock):
        async with memory_testnet(4, accept_frequency=[0.0, 1.0, 1.0, 1.0]) as net:
            await net.burst(0, 20)
            assert net.nodes[0].dispatcher.stats["offloaded"] > 0

``process_testnet``: a factory for ``ProcessTestnet`` (real node and
sim-engine processes on loopback, files under ``tmp_path``); every child is stopped when
the block ends::

    async def test_gateway(process_testnet):
        async with process_testnet(3) as net:
            status = await net.status(0)
            assert len(status["peers"]) == 2

Both need pytest-trio (``trio_mode = true``, or mark the tests ``@pytest.mark.trio``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from . import MemoryTestnet, ProcessTestnet


@pytest.fixture
def memory_testnet(tmp_path: Path) -> Callable[..., MemoryTestnet]:
    """Factory of in-memory testnets in virtual time (see ``MemoryTestnet``)."""
    from . import MemoryTestnet

    return functools.partial(MemoryTestnet, data_dir=tmp_path / "memory-testnet")


@pytest.fixture
def process_testnet(tmp_path: Path) -> Callable[..., ProcessTestnet]:
    """Factory of multi-process loopback testnets (see ``ProcessTestnet``)."""
    from . import ProcessTestnet

    return functools.partial(ProcessTestnet, root=tmp_path / "process-testnet")
