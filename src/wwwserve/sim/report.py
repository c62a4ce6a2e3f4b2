"""Results of a run: SLO attainment, latency, per-node tables, credit over time, plots."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..stats import percentile
from .run import Timelines
from .scenario import Record, Scenario, Sweep


# ---- results ------------------------------------------------------------------------------
def summarize(records: Sequence[Record], thresholds: Sequence[float]) -> dict[str, Any]:
    """SLO attainment at each threshold, latency and TTFT statistics, outcomes."""
    n = len(records)
    lat = [r.latency for r in records if r.latency is not None]
    ttft = [r.first_token - r.submit for r in records
            if r.first_token is not None and r.outcome == "ok"]
    outcomes: dict[str, int] = {}
    for r in records:
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
    return {
        "requests": n,
        "outcomes": outcomes,
        "offloaded": sum(1 for r in records if r.executor not in (None, r.origin)),
        "slo_attainment": {f"{t:g}": (sum(1 for x in lat if x <= t) / n if n else 0.0)
                           for t in thresholds},
        "latency_mean_s": sum(lat) / len(lat) if lat else None,
        "latency_p50_s": percentile(lat, 0.5), "latency_p90_s": percentile(lat, 0.9),
        "latency_p99_s": percentile(lat, 0.99),
        "ttft_mean_s": sum(ttft) / len(ttft) if ttft else None,
        "ttft_p50_s": percentile(ttft, 0.5),
    }


def results_json(scenario: Scenario, seed: int, runs: dict[str, list[Record]],
                 timelines: dict[str, Timelines] | None = None) -> str:
    """The whole run as canonical JSON (byte-identical for the same scenario and seed)."""
    def rnd(x: float | None) -> float | None:
        return None if x is None else round(x, 6)

    doc = {
        "scenario": dataclasses.asdict(scenario), "seed": seed,
        "strategies": {
            name: {"summary": summarize(recs, scenario.slo_thresholds),
                   "requests": [{"id": r.request_id, "origin": r.origin,
                                 "executor": r.executor, "submit": rnd(r.submit),
                                 "first_token": rnd(r.first_token), "finish": rnd(r.finish),
                                 "outcome": r.outcome} for r in recs],
                   "timelines": (timelines or {}).get(name, {})}
            for name, recs in runs.items()},
    }
    return json.dumps(doc, indent=1, sort_keys=True, default=str)


def summary_markdown(scenario: Scenario, runs: dict[str, list[Record]]) -> str:
    """A markdown table: SLO attainment per threshold, mean and p90 latency, TTFT."""
    th = scenario.slo_thresholds
    head = ("| strategy | " + " | ".join(f"SLO {t:g} s" for t in th)
            + " | mean latency (s) | p90 (s) | TTFT p50 (s) | offloaded | failed |")
    lines = [f"# {scenario.name}", "", scenario.description, "", head,
             "|" + "---|" * (len(th) + 6)]
    for name, recs in runs.items():
        s = summarize(recs, th)
        failed = s["requests"] - s["outcomes"].get("ok", 0)

        def f(x: float | None) -> str:
            return "-" if x is None else f"{x:.1f}"

        lines.append(f"| {name} | " + " | ".join(f"{v:.1%}" for v in s["slo_attainment"].values())
                     + f" | {f(s['latency_mean_s'])} | {f(s['latency_p90_s'])} | "
                     f"{f(s['ttft_p50_s'])} | {s['offloaded']} | {failed} |")
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (imported on first use: slow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def per_node(scenario: Scenario, records: Sequence[Record]) -> list[dict[str, Any]]:
    """Per provider: its settings, its users' requests and latency, the work it executed."""
    rows = []
    for spec in scenario.nodes:
        mine = [r for r in records if r.origin == spec.name]
        lat = [r.latency for r in mine if r.latency is not None]
        rows.append({
            "node": spec.name, "profile": spec.profile, "stake": spec.stake,
            "accept_frequency": spec.accept_frequency,
            "offload_frequency": spec.offload_frequency,
            "requests": len(mine),
            "executed_own": sum(1 for r in records if r.executor == spec.name
                                and r.origin == spec.name),
            "executed_for_others": sum(1 for r in records if r.executor == spec.name
                                       and r.origin != spec.name),
            "latency_mean_s": sum(lat) / len(lat) if lat else None})
    return rows


def per_node_markdown(scenario: Scenario, records: Sequence[Record]) -> str:
    """The ``per_node()`` rows as a markdown table."""
    lines = ["| node | profile | stake | accept | requests | ran own | ran for others "
             "| mean latency (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in per_node(scenario, records):
        lat = "-" if r["latency_mean_s"] is None else f"{r['latency_mean_s']:.1f}"
        stake = "policy" if r["stake"] is None else f"{r['stake']:g}"
        lines.append(f"| {r['node']} | {r['profile']} | {stake} | {r['accept_frequency']:g} "
                     f"| {r['requests']} | {r['executed_own']} | {r['executed_for_others']} "
                     f"| {lat} |")
    return "\n".join(lines) + "\n"


def write_sweep_plot(scenario: Scenario, sweep: Sweep, results: dict[float, list[Record]],
                     out: Path) -> Path:
    """SLO attainment at each threshold against the swept value."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    values = sorted(results)
    for t in scenario.slo_thresholds:
        ys = [summarize(results[v], [t])["slo_attainment"][f"{t:g}"] for v in values]
        ax.plot(values, ys, marker="o", label=f"SLO {t:g} s")
    ax.set_xlabel(sweep.param)
    ax.set_ylabel("SLO attainment (decentralized)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{scenario.name}: SLO attainment vs {sweep.param}")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, out / f"slo_vs_{sweep.param}.png")


def write_per_node_plot(scenario: Scenario, records: Sequence[Record], out: Path) -> Path:
    """Requests each provider ran for others, labelled with its stake and accept frequency."""
    plt = _pyplot()
    rows = per_node(scenario, records)
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [f"{r['node']}\nstake {'policy' if r['stake'] is None else format(r['stake'], 'g')}"
              f"\naccept {r['accept_frequency']:g}" for r in rows]
    ax.bar(labels, [r["executed_for_others"] for r in rows])
    ax.set_ylabel("requests run for other providers")
    ax.set_title(f"{scenario.name}: work taken from the market")
    return _save(fig, out / "per_node.png")


def write_timeline_plot(scenario: Scenario, timelines: Timelines, out: Path,
                        title: str) -> Path:
    """Running requests and stake per node over time (one run)."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for name, rows in timelines.items():
        ts = [r[0] for r in rows]
        top.plot(ts, [r[2] for r in rows], label=name)
        bottom.plot(ts, [r[4] for r in rows], label=name)
    top.set_ylabel("running requests")
    bottom.set_ylabel("stake (credits)")
    bottom.set_xlabel("time (s)")
    top.set_title(f"{scenario.name}: {title}")
    top.legend(fontsize="small")
    top.grid(alpha=0.3)
    bottom.grid(alpha=0.3)
    return _save(fig, out / "timeline.png")


def credit_by_group(scenario: Scenario, timelines: Timelines) -> dict[str, list[list[float]]]:
    """Mean credit (balance + stake) of each provider class over time: ``[[t, credit]]``."""
    groups: dict[str, list[list[list[float]]]] = {}
    for spec in scenario.nodes:
        rows = timelines.get(spec.name)
        if rows:
            groups.setdefault(spec.label, []).append(rows)
    out = {}
    for label, members in groups.items():
        n = min(len(rows) for rows in members)
        out[label] = [[members[0][i][0], sum(r[i][4] + r[i][5] for r in members) / len(members)]
                      for i in range(n)]
    return out


def credit_markdown(scenario: Scenario, timelines: Timelines) -> str:
    """A table of each class's mean credit at the start and the end of the run."""
    rows = ["| class | providers | credit at start | credit at end | change |",
            "|---|---|---|---|---|"]
    counts: dict[str, int] = {}
    for spec in scenario.nodes:
        counts[spec.label] = counts.get(spec.label, 0) + 1
    for label, curve in sorted(credit_by_group(scenario, timelines).items(),
                               key=lambda kv: -kv[1][-1][1]):
        a, b = curve[0][1], curve[-1][1]
        rows.append(f"| {label} | {counts[label]} | {a:.1f} | {b:.1f} | {b - a:+.1f} |")
    return "\n".join(rows) + "\n"


def write_credit_plot(scenario: Scenario, timelines: Timelines, out: Path) -> Path:
    """Mean credit (balance + stake) per provider class over time."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, curve in credit_by_group(scenario, timelines).items():
        ax.plot([p[0] for p in curve], [p[1] for p in curve], label=label)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("credit: balance + stake (mean per provider)")
    ax.set_title(f"{scenario.name}: credit over time per class")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, out / "credit.png")


def write_plots(scenario: Scenario, runs: dict[str, list[Record]], out: Path) -> list[Path]:
    """PNG figures of a run: SLO attainment curves, latency CDFs, latency over time."""
    plt = _pyplot()
    written = []
    lo, hi = min(scenario.slo_thresholds), max(scenario.slo_thresholds)
    grid = [lo + (hi - lo) * i / 50 for i in range(51)]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, recs in runs.items():
        curve = summarize(recs, grid)["slo_attainment"]
        ax.plot(grid, list(curve.values()), label=name)
    ax.set_xlabel("SLO: end-to-end latency threshold (s)")
    ax.set_ylabel("SLO attainment (share of all requests)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{scenario.name}: SLO attainment")
    ax.legend()
    ax.grid(alpha=0.3)
    written.append(_save(fig, out / "slo_attainment.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, recs in runs.items():
        lat = sorted(x for x in (r.latency for r in recs) if x is not None)
        if lat:
            ax.plot(lat, [(i + 1) / len(recs) for i in range(len(lat))], label=name)
    ax.set_xlabel("end-to-end latency (s)")
    ax.set_ylabel("share of requests")
    ax.set_title(f"{scenario.name}: latency CDF")
    ax.legend()
    ax.grid(alpha=0.3)
    written.append(_save(fig, out / "latency_cdf.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, recs in runs.items():
        pts = [(r.submit, r.latency) for r in recs if r.latency is not None]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=6, label=name, alpha=0.6)
    if scenario.switch_at is not None:
        ax.axvline(scenario.switch_at, color="grey", linestyle="--", label="rates swap")
    for spec in scenario.nodes:
        if spec.join_at > 0:
            ax.axvline(spec.join_at, color="green", linestyle=":", label=f"{spec.name} joins")
        if spec.leave_at is not None:
            ax.axvline(spec.leave_at, color="red", linestyle=":", label=f"{spec.name} leaves")
    ax.set_xlabel("submitted at (s)")
    ax.set_ylabel("end-to-end latency (s)")
    ax.set_title(f"{scenario.name}: latency over time")
    ax.legend(markerscale=3)
    ax.grid(alpha=0.3)
    written.append(_save(fig, out / "latency_over_time.png"))
    return written
