"""The overlay conformance suite on MemoryOverlay, in virtual time."""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager

import pytest
from trio.testing import MockClock

from overlay_conformance import *  # noqa: F403
from wwwserve.overlay import MemoryNetwork


class MemoryHarness:
    kind = "memory"

    def __init__(self, network: MemoryNetwork) -> None:
        self.network = network

    @asynccontextmanager
    async def make(self, n: int):
        async with AsyncExitStack() as stack:
            nodes = [await stack.enter_async_context(self.network.node()) for _ in range(n)]
            yield tuple(nodes)


@pytest.fixture
def clock():
    return MockClock(autojump_threshold=0)


@pytest.fixture
async def overlays(clock):
    async with MemoryNetwork(seed=7, latency=0.002) as net:
        yield MemoryHarness(net)
