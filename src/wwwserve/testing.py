"""Helpers for tests and benchmarks that run wwwserve as child processes on loopback.

:class:`ChildProcess` starts ``python -m wwwserve <command> ... --json``-style commands that
print one JSON object per line, waits for their ``started`` event and keeps the rest::

    async with trio.open_nursery() as nursery:
        engine = ChildProcess(["sim-engine", "--port", "0", "--json"])
        started = await engine.start(nursery)
        print(started["url"])
        ...
        await engine.stop()
"""

from __future__ import annotations

import functools
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any

import trio

__all__ = ["ChildProcess"]


class ChildProcess:
    """One ``python -m wwwserve`` child process speaking JSON lines on stdout."""

    def __init__(self, args: Sequence[str]) -> None:
        self.args = [sys.executable, "-m", "wwwserve", *args]
        self.events: list[dict[str, Any]] = []
        self.started: dict[str, Any] = {}
        self._started = trio.Event()
        self._changed = trio.Event()
        self.proc: trio.Process | None = None

    async def start(self, nursery: trio.Nursery, within: float = 30.0) -> dict[str, Any]:
        """Start the process and return its ``started`` event."""
        self.proc = await nursery.start(functools.partial(
            trio.run_process, self.args, stdout=-1, check=False))
        nursery.start_soon(self._read)
        with trio.fail_after(within):
            await self._started.wait()
        return self.started

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        buf = b""
        async for chunk in self.proc.stdout:
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(event, dict):
                    continue
                if event.get("event") == "started" and not self._started.is_set():
                    self.started = event
                    self._started.set()
                self.events.append(event)
                self._changed.set()
                self._changed = trio.Event()

    async def wait_for(self, predicate: Any, within: float) -> None:
        """Wait until ``predicate(self)`` holds (re-checked on each event and every 50 ms)."""
        with trio.fail_after(within):
            while not predicate(self):
                with trio.move_on_after(0.05):
                    await self._changed.wait()

    @property
    def running(self) -> bool:
        """True while the process has not exited."""
        return self.proc is not None and self.proc.returncode is None

    def kill(self) -> None:
        """SIGKILL the process."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)

    async def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``grace`` s, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(grace):
                await self.proc.wait()
            if self.proc.returncode is None:
                self.proc.send_signal(signal.SIGKILL)
                await self.proc.wait()
        return self.proc.returncode
