"""The node's gateway: the OpenAI-compatible API its users call, plus ``/metrics`` and ``/status``.

Requests go to :meth:`Node.submit <wwwserve.Node.submit>`, so they run locally or on a peer
as the dispatcher decides. ``/v1/models`` lists the models served anywhere in the network.
``/metrics`` is Prometheus exposition (``prometheus_client``), one registry per gateway:

- ``wwwserve_requests_total{outcome}``: finished user requests by outcome (``ok``,
  ``bad_request``, ``not_found``, ``no_capacity``, ``deadline``, ``broken``, ``error``);
- ``wwwserve_request_latency_seconds``, ``wwwserve_ttft_seconds``: histograms;
- ``wwwserve_dispatch_total{decision}``: dispatcher counters (``local``, ``offloaded``,
  ``accepted``, ``queued``, ``offload_failed``, ...);
- ``wwwserve_credit``, ``wwwserve_stake``, ``wwwserve_peers{status}``;
- ``wwwserve_duel_events_total{event}``: duels this node requested and judged (``decided``,
  ``tie``, ``settled``, ``void_*``, ``voted_A``, ``refused_*``, ...);
- ``wwwserve_peer_rating{peer}``, ``wwwserve_peer_duels_total{peer,result}``: Bradley–Terry
  ratings (Elo scale) and results of peers from settled duels;
- ``wwwserve_model_token_usage{model}``, ``wwwserve_model_running{model}``,
  ``wwwserve_model_queued{model}``, ``wwwserve_model_healthy{model}``.

``/status`` is a JSON summary (peer id, peers, models and their load, credit, stake,
dispatcher counters, duel counters and peers' ratings) for ``wwwserve status`` and dashboards.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .._compat import TaskStatus
from .openai_api import (
    OpenAIApp,
    Receive,
    Scope,
    Send,
    error_body,
    metrics_handler,
    send_json,
)
from .server import serve_http

if TYPE_CHECKING:
    from ..ledger.service import LedgerService
    from ..node import Node

__all__ = ["Gateway"]

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


class _NodeCollector(Collector):
    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        c = CounterMetricFamily("wwwserve_dispatch", "Dispatcher decisions and events.",
                                labels=["decision"])
        for key, value in sorted(node.dispatcher.stats.items()):
            c.add_metric([key], float(value))
        yield c
        yield GaugeMetricFamily("wwwserve_credit", "Credit balance.",
                                value=node.credit.balance())
        yield GaugeMetricFamily("wwwserve_stake", "Staked credit.", value=node.credit.stake())
        g = GaugeMetricFamily("wwwserve_peers", "Known peers by status.", labels=["status"])
        counts: dict[str, int] = {}
        for info in node.peers.values():
            counts[info.status.value] = counts.get(info.status.value, 0) + 1
        for status, n in sorted(counts.items()):
            g.add_metric([status], float(n))
        yield g
        d = CounterMetricFamily("wwwserve_duel_events", "Duels requested and judged here.",
                                labels=["event"])
        for key, value in sorted(node.duels.stats.items()):
            d.add_metric([key], float(value))
        yield d
        ratings = node.ratings()
        r = GaugeMetricFamily("wwwserve_peer_rating",
                              "Bradley-Terry rating of a peer from duels (Elo scale).",
                              labels=["peer"])
        results = CounterMetricFamily("wwwserve_peer_duels", "A peer's duel results.",
                                      labels=["peer", "result"])
        for peer, rec in sorted(ratings.items()):
            r.add_metric([peer], rec.rating)
            for result, n in (("won", rec.wins), ("lost", rec.losses), ("tie", rec.ties)):
                results.add_metric([peer, result], float(n))
        yield r
        yield results
        families = {
            "token_usage": GaugeMetricFamily("wwwserve_model_token_usage",
                                             "KV cache in use (0..1).", labels=["model"]),
            "running": GaugeMetricFamily("wwwserve_model_running", "Running requests.",
                                         labels=["model"]),
            "queued": GaugeMetricFamily("wwwserve_model_queued", "Queued requests.",
                                        labels=["model"]),
            "healthy": GaugeMetricFamily("wwwserve_model_healthy",
                                         "1 if the model's engine is available.",
                                         labels=["model"]),
        }
        for m in node.dispatcher.models:
            load = m.engine.load()
            for key, fam in families.items():
                fam.add_metric([m.name], float(getattr(load, key)))
        yield from families.values()
        ledger = node.ledger
        if ledger is not None:
            chain = ledger.chain
            yield GaugeMetricFamily("wwwserve_ledger_height", "Height of the best chain.",
                                    value=chain.height)
            yield GaugeMetricFamily("wwwserve_ledger_finalized_height",
                                    "Height of the last final block.",
                                    value=chain.finalized_height)
            yield GaugeMetricFamily("wwwserve_ledger_pending_transactions",
                                    "Transactions waiting for a block.", value=len(chain.pool))
            events = CounterMetricFamily("wwwserve_ledger_events",
                                         "Ledger events (blocks and transactions received, "
                                         "rejected, proposed, synced; reorganizations).",
                                         labels=["event"])
            for key, value in sorted({**chain.stats, **ledger.stats}.items()):
                events.add_metric([key], float(value))
            yield events


def _percentiles(values: Iterable[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    return {f"p{q}": 1000 * ordered[min(len(ordered) - 1, len(ordered) * q // 100)]
            for q in (50, 90, 99)}


def _ledger_status(ledger: LedgerService | None) -> dict[str, object] | None:
    if ledger is None:
        return None
    from ..ledger.service import ledger_view

    return ledger_view(ledger.chain, last=0, accounts=False, stats=ledger.stats)


class Gateway:
    """The HTTP gateway of ``node``; ``await nursery.start(gateway.run)`` → base URL."""

    def __init__(self, node: Node, *, host: str | None = None, port: int | None = None) -> None:
        params = node.config.gateway
        self.node = node
        self.host = params.host if host is None else host
        self.port = params.port if port is None else port
        self.url = ""
        self.registry = CollectorRegistry(auto_describe=False)
        self._requests = Counter("wwwserve_requests", "Finished user requests by outcome.",
                                 ["outcome"], registry=self.registry)
        self._latency = Histogram("wwwserve_request_latency_seconds",
                                  "End-to-end latency of successful requests.",
                                  buckets=_BUCKETS, registry=self.registry)
        self._ttft = Histogram("wwwserve_ttft_seconds",
                               "Time to first token of successful requests.",
                               buckets=_BUCKETS, registry=self.registry)
        self.registry.register(_NodeCollector(node))
        self.app = OpenAIApp(
            node.submit, lambda: node.dispatcher.network_models(), api_key=params.api_key,
            max_body=params.max_body_bytes, timeout=params.request_timeout,
            health=lambda: any(m.engine.load().healthy for m in node.dispatcher.models)
            or bool(node.peers),
            on_done=self._observe)
        self.app.route("GET", "/metrics", metrics_handler(self.registry))
        self.app.route("GET", "/status", self._status)
        self.app.route("GET", "/ledger", self._ledger)

    def _observe(self, outcome: str, latency: float, ttft: float | None) -> None:
        self._requests.labels(outcome).inc()
        if outcome == "ok":
            self._latency.observe(latency)
            if ttft is not None:
                self._ttft.observe(ttft)

    async def _status(self, scope: Scope, receive: Receive, send: Send) -> None:
        node = self.node
        models = []
        for m in node.dispatcher.models:
            load = m.engine.load()
            models.append({"model": m.name, "token_usage": load.token_usage,
                           "running": load.running, "queued": load.queued,
                           "healthy": load.healthy})
        peers = [{"peer_id": pid, "status": info.status.value, "stake": info.stake,
                  "credit": info.credit, "models": [m.model for m in info.models]}
                 for pid, info in sorted(node.peers.items())]
        await send_json(send, 200, {
            "peer_id": node.peer_id, "name": node.config.node.name,
            "addresses": list(node.addresses), "credit": node.credit.balance(),
            "stake": node.credit.stake(), "models": models, "peers": peers,
            "dispatch": dict(node.dispatcher.stats),
            "offload_dispatch_ms": _percentiles(node.dispatcher.offload_delays),
            "ledger": _ledger_status(node.ledger),
            "duels": dict(node.duels.stats),
            "ratings": {peer: {"rating": rec.rating, "wins": rec.wins, "losses": rec.losses,
                               "ties": rec.ties}
                        for peer, rec in sorted(node.ratings().items())},
        })

    async def _ledger(self, scope: Scope, receive: Receive, send: Send) -> None:
        ledger = self.node.ledger
        if ledger is None:
            await send_json(send, 404, error_body(
                404, "this node has no ledger (its config sets no network.genesis)"))
            return
        from ..ledger.service import ledger_view

        await send_json(send, 200, ledger_view(ledger.chain, last=20, stats=ledger.stats))

    async def run(self, *, task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``started`` with the base URL."""
        def remember(url: str) -> None:
            self.url = url

        await serve_http(self.app, self.host, self.port, on_url=remember, task_status=task_status)
