"""What a testnet run measured: latency, SLO attainment and the nodes' own counters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import WWWServeError
from ..stats import percentile
from .processes import ProcessTestnet
from .workload import RequestResult

__all__ = ["SLO_THRESHOLDS", "Report", "report"]


@dataclass
class Report:
    """What a testnet run measured (see ``report()``)."""

    requests: int
    ok: int
    failed: int
    latency_s: dict[str, float | None]
    ttft_s: dict[str, float | None]
    slo_attainment: dict[str, float]
    offloaded_share: float | None
    nodes: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


SLO_THRESHOLDS = (2.0, 5.0, 10.0, 20.0, 40.0)


async def report(net: ProcessTestnet, results: Sequence[RequestResult]) -> Report:
    """Summarise ``results`` with every node's ``/status`` counters and memory."""
    lat = [r.latency for r in results if r.latency is not None]
    ttft = [r.ttft for r in results if r.ok and r.ttft is not None]
    n = len(results)
    nodes: list[dict[str, Any]] = []
    local = offloaded = 0
    for k, node in enumerate(net.nodes):
        row: dict[str, Any] = {"name": node.name, "peer_id": node.peer_id,
                               "profile": node.profile or node.engine_url,
                               "sent": sum(1 for r in results if r.node == k)}
        try:
            st = await net.status(k)
        except (OSError, ValueError, WWWServeError) as exc:
            row["error"] = str(exc)
        else:
            d = st.get("dispatch", {})
            row.update(local=d.get("local", 0), offloaded=d.get("offloaded", 0),
                       accepted=d.get("accepted", 0), credit=round(st.get("credit", 0.0), 3),
                       stake=round(st.get("stake", 0.0), 3), peers=len(st.get("peers", [])))
            local += row["local"]
            offloaded += row["offloaded"]
        rss = net.rss(k)
        peak = net.rss(k, peak=True)
        row["rss_mb"] = round(rss / 2**20, 1) if rss is not None else None
        row["peak_rss_mb"] = round(peak / 2**20, 1) if peak is not None else None
        nodes.append(row)
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            key = r.error.split(":")[0]
            errors[key] = errors.get(key, 0) + 1
    return Report(
        requests=n, ok=sum(r.ok for r in results), failed=sum(not r.ok for r in results),
        latency_s={f"p{int(q * 100)}": _round(percentile(lat, q)) for q in (0.5, 0.9, 0.99)},
        ttft_s={f"p{int(q * 100)}": _round(percentile(ttft, q)) for q in (0.5, 0.9, 0.99)},
        slo_attainment={f"{t:g}s": round(sum(1 for x in lat if x <= t) / n, 4) if n else 0.0
                        for t in SLO_THRESHOLDS},
        offloaded_share=round(offloaded / (local + offloaded), 4) if local + offloaded else None,
        nodes=nodes, errors=errors)


def _round(x: float | None) -> float | None:
    return round(x, 3) if x is not None else None
