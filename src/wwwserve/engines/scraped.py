"""An in-process engine read as a real one is: its load as of the last scrape.

A node in front of SGLang or vLLM sees the engine's load through ``/metrics`` read every
``scrape_interval`` seconds, never as it is this instant. ``Scraped`` gives a
simulated engine the same view, so that the simulated world decides on readings as stale
as the real one's.
"""

from __future__ import annotations

import trio

from .._compat import TaskStatus
from .base import CompletionRequest, Emit, Engine, EngineLoad, Usage

__all__ = ["Scraped"]


class Scraped:
    """``inner`` with ``load()`` read every ``interval`` seconds by ``run()``
    (until the first reading, it is read on demand)."""

    def __init__(self, inner: Engine, interval: float) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be positive, got {interval!r}")
        self.inner = inner
        self.interval = interval
        self._reading: EngineLoad | None = None

    @property
    def models(self) -> tuple[str, ...]:
        """The models ``inner`` serves."""
        return self.inner.models

    def load(self) -> EngineLoad:
        """The last reading of ``inner``'s load."""
        if self._reading is None:
            return self.inner.load()
        return self._reading

    async def generate(self, request: CompletionRequest, emit: Emit) -> Usage:
        """Run ``request`` on ``inner``."""
        return await self.inner.generate(request, emit)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run ``inner`` and read its load every ``interval`` seconds until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.inner.run)
            self._reading = self.inner.load()
            task_status.started()
            while True:
                await trio.sleep(self.interval)
                self._reading = self.inner.load()
