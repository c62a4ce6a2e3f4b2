"""The node's gateway: the OpenAI-compatible API its users call, plus ``/metrics`` and ``/status``.

Requests go to the node's ``submit`` (any ``NodeService``; a
``wwwserve.Node`` is one), so they run locally or on a peer as its dispatcher decides.
``/v1/models`` lists the models served anywhere in the network.
``/metrics`` is Prometheus exposition (``prometheus_client``), one registry per gateway:

- ``wwwserve_requests_total{outcome}``: finished user requests by outcome (``ok``,
  ``bad_request``, ``not_found``, ``no_capacity``, ``deadline``, ``broken``, ``error``);
- ``wwwserve_request_latency_seconds``, ``wwwserve_ttft_seconds``: histograms;
- ``wwwserve_dispatch_total{decision}``: dispatcher counters (``local``, ``offloaded``,
  ``accepted``, ``queued``, ``offload_failed``, ...);
- ``wwwserve_payments_total{state}``: this node's payments for offloaded requests,
  ``submitted`` (signed and sent) and ``confirmed`` (on the best chain);
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

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .._compat import TaskStatus
from ..config import GatewayParams
from ..stats import percentile
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
from .service import NodeService

__all__ = ["Gateway"]

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


class _NodeCollector(Collector):
    def __init__(self, node: NodeService) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        st = self.node.status()
        c = CounterMetricFamily("wwwserve_dispatch", "Dispatcher decisions and events.",
                                labels=["decision"])
        for key, value in sorted(st.dispatch.items()):
            c.add_metric([key], float(value))
        yield c
        if st.payments is not None:
            p = CounterMetricFamily("wwwserve_payments", "This node's payments for offloaded "
                                    "requests: submitted, and confirmed on the chain.",
                                    labels=["state"])
            for key, value in sorted(st.payments.items()):
                p.add_metric([key], float(value))
            yield p
        yield GaugeMetricFamily("wwwserve_credit", "Credit balance.", value=st.credit)
        yield GaugeMetricFamily("wwwserve_stake", "Staked credit.", value=st.stake)
        g = GaugeMetricFamily("wwwserve_peers", "Known peers by status.", labels=["status"])
        counts: dict[str, int] = {}
        for peer in st.peers:
            counts[peer.status] = counts.get(peer.status, 0) + 1
        for status, n in sorted(counts.items()):
            g.add_metric([status], float(n))
        yield g
        d = CounterMetricFamily("wwwserve_duel_events", "Duels requested and judged here.",
                                labels=["event"])
        for key, value in sorted(st.duels.items()):
            d.add_metric([key], float(value))
        yield d
        r = GaugeMetricFamily("wwwserve_peer_rating",
                              "Bradley-Terry rating of a peer from duels (Elo scale).",
                              labels=["peer"])
        results = CounterMetricFamily("wwwserve_peer_duels", "A peer's duel results.",
                                      labels=["peer", "result"])
        for peer_id, rec in sorted(st.ratings.items()):
            r.add_metric([peer_id], rec.rating)
            for result, n in (("won", rec.wins), ("lost", rec.losses), ("tie", rec.ties)):
                results.add_metric([peer_id, result], float(n))
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
        for m in st.models:
            for key, fam in families.items():
                fam.add_metric([m.model], float(getattr(m, key)))
        yield from families.values()
        ledger = st.ledger
        if ledger is not None:
            yield GaugeMetricFamily("wwwserve_ledger_height", "Height of the best chain.",
                                    value=ledger.height)
            yield GaugeMetricFamily("wwwserve_ledger_finalized_height",
                                    "Height of the last final block.",
                                    value=ledger.finalized_height)
            yield GaugeMetricFamily("wwwserve_ledger_pending_transactions",
                                    "Transactions waiting for a block.", value=ledger.pending)
            events = CounterMetricFamily("wwwserve_ledger_events",
                                         "Ledger events (blocks and transactions received, "
                                         "rejected, proposed, synced; reorganizations).",
                                         labels=["event"])
            for key, value in sorted(ledger.events.items()):
                events.add_metric([key], float(value))
            yield events


def _percentiles(values: Iterable[float]) -> dict[str, float]:
    """p50, p90 and p99 of ``values`` (seconds) in milliseconds."""
    ordered = sorted(values)
    return {f"p{q}": 1000 * (percentile(ordered, q / 100) or 0.0)
            for q in (50, 90, 99)} if ordered else {}


class Gateway:
    """The HTTP gateway of ``node``; ``await nursery.start(gateway.run)`` → base URL."""

    def __init__(self, node: NodeService, params: GatewayParams, *, host: str | None = None,
                 port: int | None = None) -> None:
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
            node.submit, node.models, api_key=params.api_key,
            max_body=params.max_body_bytes, timeout=params.request_timeout,
            health=node.healthy, on_done=self._observe, cors_origins=params.cors_origins)
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
        st = self.node.status()
        await send_json(send, 200, {
            "peer_id": st.peer_id, "name": st.name, "addresses": list(st.addresses),
            "credit": st.credit, "stake": st.stake,
            "models": [{"model": m.model, "token_usage": m.token_usage, "running": m.running,
                        "queued": m.queued, "healthy": m.healthy} for m in st.models],
            "peers": [{"peer_id": p.peer_id, "status": p.status, "stake": p.stake,
                       "credit": p.credit, "models": list(p.models)} for p in st.peers],
            "dispatch": dict(st.dispatch),
            "payments": dict(st.payments or {}),
            "offload_dispatch_ms": _percentiles(st.offload_delays),
            "ledger": self._ledger_summary(),
            "duels": dict(st.duels),
            "ratings": {peer: {"rating": rec.rating, "wins": rec.wins, "losses": rec.losses,
                               "ties": rec.ties}
                        for peer, rec in sorted(st.ratings.items())},
        })

    def _ledger_summary(self) -> dict[str, object] | None:
        view = self.node.ledger_json(0, accounts=False)
        return dict(view) if view is not None else None

    async def _ledger(self, scope: Scope, receive: Receive, send: Send) -> None:
        view = self.node.ledger_json(20)
        if view is None:
            await send_json(send, 404, error_body(
                404, "this node has no ledger (its config sets no network.genesis)"))
            return
        await send_json(send, 200, dict(view))

    async def run(self, *, task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``started`` with the base URL."""
        def remember(url: str) -> None:
            self.url = url

        await serve_http(self.app, self.host, self.port, on_url=remember, task_status=task_status)
