"""Workloads for a ``ProcessTestnet``: requests through the gateways."""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from ..errors import ConfigError
from .processes import ProcessTestnet

__all__ = ["WORKLOADS", "RequestResult", "Workload", "run_workload"]

WORKLOADS = ("hot", "uniform", "burst")


@dataclass(frozen=True)
class Workload:
    """Requests sent through the nodes' gateways.

    ``kind``: ``hot`` (Poisson arrivals at ``rate`` req/s for ``duration`` s over the whole
    network, the first quarter of the nodes getting 4x the share of the others), ``uniform``
    (the same, every node alike) or ``burst`` (``requests`` at once on node 0).
    ``requests`` caps the count (0: no cap, except for ``burst`` where it is the count).
    """

    kind: str = "hot"
    rate: float = 3.0
    duration: float = 30.0
    requests: int = 0
    prompt_tokens: int = 2000
    max_tokens: int = 128
    timeout: float = 120.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in WORKLOADS:
            raise ConfigError(f"workload: must be one of {', '.join(WORKLOADS)}, "
                              f"got {self.kind!r}")
        for name in ("rate", "duration", "timeout"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"workload {name}: must be a positive number, got {value!r}")
        for name in ("prompt_tokens", "max_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"workload {name}: must be at least 1, "
                                  f"got {getattr(self, name)}")
        if self.requests < 0 or (self.kind == "burst" and self.requests < 1):
            raise ConfigError(f"workload requests: must be >= {int(self.kind == 'burst')}, "
                              f"got {self.requests}")

    def arrivals(self, n: int) -> list[tuple[float, int]]:
        """``(send time in s from the start, node index)`` of every request, in time order."""
        rng = random.Random(self.seed)
        if self.kind == "burst":
            return [(0.01 * i, 0) for i in range(self.requests)]
        hot = max(1, n // 4)
        weights = [4.0 if (self.kind == "hot" and i < hot) else 1.0 for i in range(n)]
        out: list[tuple[float, int]] = []
        t = rng.expovariate(self.rate)
        while t < self.duration and (not self.requests or len(out) < self.requests):
            out.append((t, rng.choices(range(n), weights)[0]))
            t += rng.expovariate(self.rate)
        return out


@dataclass(frozen=True)
class RequestResult:
    """One workload request as its user saw it (times in s from the workload's start)."""

    index: int
    node: int
    sent: float
    first_token: float | None
    finished: float | None
    ok: bool
    completion_tokens: int = 0
    error: str = ""

    @property
    def latency(self) -> float | None:
        """End-to-end latency in s (None if it failed)."""
        return self.finished - self.sent if self.ok and self.finished is not None else None

    @property
    def ttft(self) -> float | None:
        """Time to first token in s (None if none came)."""
        return self.first_token - self.sent if self.first_token is not None else None


async def run_workload(
    net: ProcessTestnet, workload: Workload, *,
    on_result: Callable[[RequestResult], Awaitable[None] | None] | None = None,
) -> list[RequestResult]:
    """Send ``workload`` through the gateways (streamed chat completions); one result each.

    Each request ends ok, or failed with the error its user saw; none is left hanging
    (``workload.timeout`` bounds each one).
    """
    import openai

    arrivals = workload.arrivals(net.n)
    clients = [openai.AsyncOpenAI(base_url=node.gateway + "/v1", api_key="testnet",
                                  max_retries=0, timeout=workload.timeout)
               for node in net.nodes]
    prompt = "tell me about the weather " * max(1, workload.prompt_tokens * 4 // 26)
    results: list[RequestResult] = []
    t0 = trio.current_time()

    async def one(index: int, node: int, sent: float) -> None:
        first: float | None = None
        tokens = 0
        error = ""
        try:
            with trio.fail_after(workload.timeout):
                stream = await clients[node].chat.completions.create(
                    model=net.model, messages=[{"role": "user", "content": prompt}],
                    max_tokens=workload.max_tokens, stream=True,
                    stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
                async for chunk in stream:
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = trio.current_time() - t0
                    if chunk.usage is not None:
                        tokens = chunk.usage.completion_tokens
        except trio.TooSlowError:
            error = f"no complete answer within {workload.timeout:g} s"
        except openai.OpenAIError as exc:
            error = f"{type(exc).__name__}: {exc}"
        ok = not error and tokens == workload.max_tokens
        if not error and not ok:
            error = f"short answer: {tokens} of {workload.max_tokens} tokens"
        result = RequestResult(index=index, node=node, sent=sent, first_token=first,
                               finished=trio.current_time() - t0, ok=ok,
                               completion_tokens=tokens, error=error[:300])
        results.append(result)
        if on_result is not None:
            maybe = on_result(result)
            if maybe is not None:
                await maybe

    try:
        async with trio.open_nursery() as nursery:
            for index, (at, node) in enumerate(arrivals):
                await trio.sleep_until(t0 + at)
                nursery.start_soon(one, index, node, trio.current_time() - t0)
    finally:
        with trio.CancelScope(shield=True):
            for client in clients:
                await client.close()
    return sorted(results, key=lambda r: r.index)
