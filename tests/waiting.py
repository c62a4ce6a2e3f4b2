"""Waiting for an event in tests: poll a condition under a deadline, never a fixed sleep."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import trio


async def wait_until(check: Callable[[], bool | Awaitable[bool]], *, within: float,
                     what: str, every: float = 0.05) -> float:
    """Poll ``check`` (sync or async) until it is true; returns the seconds it took.

    Fails with ``what`` if it is still false after ``within`` seconds.
    """
    start = trio.current_time()
    with trio.move_on_after(within):
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return trio.current_time() - start
            await trio.sleep(every)
    raise AssertionError(f"not within {within:g} s: {what}")


async def status_of(gateway: str) -> dict[str, Any]:
    """A node's ``/status`` JSON."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        resp = await client.get(gateway + "/status")
        resp.raise_for_status()
        data = resp.json()
    assert isinstance(data, dict)
    return data


async def models_known(gateway: str, peers: set[str], within: float = 30.0) -> None:
    """Wait until the node at ``gateway`` knows the models of every one of ``peers`` (its
    peers' heartbeats carry them)."""
    async def known() -> bool:
        rows = {p["peer_id"]: p for p in (await status_of(gateway))["peers"]}
        return all(rows.get(p, {}).get("models") for p in peers)

    await wait_until(known, within=within, every=0.2, what=f"{gateway} knows peers' models")
