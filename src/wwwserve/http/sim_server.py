"""``wwwserve sim-engine``: the simulated engine behind an SGLang-compatible HTTP API.

Serves ``/v1/chat/completions`` and ``/v1/completions`` (SSE streaming and not),
``/v1/models``, ``/health`` and ``/metrics`` with SGLang's metric names
(``sglang:token_usage``, ``sglang:num_running_reqs``, ``sglang:num_queue_reqs``, token
counters, and `sglang:num_aborted_requests`, wwwserve's own count of requests whose client went
away), so the HTTP engine driver and laptop testnets need no GPU. Time is the wall
clock here: a request takes as long as the profile says it would on the real GPU.
"""

from __future__ import annotations

from collections.abc import Iterator

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .._compat import TaskStatus
from ..engines import SimEngine
from .openai_api import OpenAIApp, metrics_handler
from .server import serve_http

__all__ = ["SimEngineServer", "sim_engine_app"]

class _SGLangCollector(Collector):
    def __init__(self, engine: SimEngine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        load = self.engine.load()
        labels = ["model_name", "engine_type", "tp_rank", "pp_rank"]
        values = [self.engine.models[0], "unified", "0", "0"]
        for name, doc, value in (
            ("sglang:token_usage", "The token usage", load.token_usage),
            ("sglang:num_running_reqs", "The number of running requests", load.running),
            ("sglang:num_queue_reqs", "The number of requests in the waiting queue",
             load.queued),
        ):
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(values, float(value))
            yield g
        c = CounterMetricFamily("sglang:generation_tokens", "Number of generation tokens "
                                "processed.", labels=labels)
        c.add_metric(values, float(self.engine.generated_tokens))
        yield c
        c = CounterMetricFamily("sglang:num_requests", "Number of requests processed.",
                                labels=labels)
        c.add_metric(values, float(self.engine.completed))
        yield c
        c = CounterMetricFamily("sglang:num_aborted_requests", "Number of requests aborted "
                                "before they finished (their client went away).",
                                labels=labels)
        c.add_metric(values, float(self.engine.aborted))
        yield c


def sim_engine_app(engine: SimEngine, *, api_key: str | None = None) -> OpenAIApp:
    """The ASGI app serving ``engine`` like SGLang does."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SGLangCollector(engine))

    # SGLang's streamed responses start before the first token (a StreamingResponse)
    app = OpenAIApp(engine.generate, lambda: engine.models, api_key=api_key,
                    health=lambda: engine.load().healthy, headers_at_once=True)
    app.route("GET", "/metrics", metrics_handler(registry))
    return app


class SimEngineServer:
    """A ``SimEngine`` and its HTTP server; ``await nursery.start(server.run)`` → URL."""

    def __init__(self, engine: SimEngine, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None) -> None:
        self.engine = engine
        self.host = host
        self.port = port
        self.app = sim_engine_app(engine, api_key=api_key)
        self.url = ""

    async def run(self, *, task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the engine and serve it until cancelled; ``started`` with the base URL."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.engine.run)
            self.url = await nursery.start(serve_http, self.app, self.host, self.port)
            task_status.started(self.url)
