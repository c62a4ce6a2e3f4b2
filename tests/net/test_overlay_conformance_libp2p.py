"""The overlay conformance suite on Libp2pOverlay, over loopback TCP."""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager

import pytest

from overlay_conformance import *  # noqa: F403
from wwwserve.identity import Identity
from wwwserve.overlay import Libp2pOverlay


class Libp2pHarness:
    kind = "libp2p"

    @asynccontextmanager
    async def make(self, n: int):
        async with AsyncExitStack() as stack:
            nodes = [
                await stack.enter_async_context(
                    Libp2pOverlay(Identity.generate(), dial_timeout=3.0)
                )
                for _ in range(n)
            ]
            yield tuple(nodes)


@pytest.fixture
def clock():
    return None


@pytest.fixture
async def overlays():
    return Libp2pHarness()
