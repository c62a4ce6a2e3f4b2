"""The paper's SLO experiments: decentralized vs single-node vs centralized, one run each.

For each of the four SLO scenarios (fluctuating, heterogeneous models, diverse GPUs, Azure)
the same workload and seed are served by every strategy in virtual time
(``wwwserve.sim.experiment``). Printed per scenario, then as one JSON line:

- ``<s>_slo_ratio_max``: the largest ratio of decentralized to single-node SLO attainment
  over the scenario's thresholds (paper: >= 1.5x in the fluctuating setting);
- ``<s>_mean_latency_reduction_pct``: how much lower decentralized's mean latency is than
  single-node's (paper: 27.6% in the fluctuating setting);
- ``<s>_gap_to_centralized_pp_max``: the most decentralized falls below the authors'
  centralized rule at any threshold, in percentage points (target <= 5; negative: better);
- ``<s>_gap_to_oracle_pp_max``: the same against the oracle scheduler;
- ``<s>_sim_requests_per_wall_s``: simulated requests per wall-clock second, all strategies.

    python bench/paper.py [--seed N] [--seeds K] [--only fluctuating,azure]
                          [--scrape-interval S]

The decentralized nodes read their engines' load every ``scrape_interval`` seconds, as
they read a real engine's ``/metrics`` (``--scrape-interval 0``: the load as it is).

``--seeds K`` pools the requests of K seeds per scenario before computing the figures
(the fluctuating setting has ~100 requests per run: single runs swing widely).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

from wwwserve.sim.experiment import (
    STRATEGIES,
    Record,
    Scenario,
    load_scenario,
    run_strategy,
    summarize,
)

SCENARIOS = ("fluctuating", "heterogeneous-models", "diverse-gpus", "azure")


def pooled(scenario: Scenario, strategies: tuple[str, ...], seed: int = 0, seeds: int = 1
           ) -> dict[str, list[Record]]:
    """Per strategy, the requests of ``seeds`` runs from ``seed`` on, pooled (one run of
    the fluctuating setting is ~100 requests: its figures swing widely from seed to seed)."""
    return {s: [r for k in range(seeds) for r in run_strategy(scenario, s, seed + k)]
            for s in strategies}


def vs_single(summaries: dict[str, Any], who: str) -> tuple[float, float]:
    """(largest SLO ratio of ``who`` to single-node over the thresholds, how much lower its
    mean latency is than single-node's, in %)."""
    mine, single = summaries[who]["slo_attainment"], summaries["single"]["slo_attainment"]
    ratio = max(mine[t] / single[t] if single[t] else 0.0 for t in mine)
    reduction = 100 * (1 - summaries[who]["latency_mean_s"]
                       / summaries["single"]["latency_mean_s"])
    return ratio, reduction


def main(seed: int, only: list[str], seeds: int = 1,
         scrape_interval: float | None = None) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in only:
        scenario = load_scenario(name)
        if scrape_interval is not None:
            scenario = dataclasses.replace(scenario, scrape_interval=scrape_interval)
        t = time.perf_counter()
        runs = pooled(scenario, STRATEGIES, seed, seeds)
        wall = time.perf_counter() - t
        s = {k: summarize(v, scenario.slo_thresholds) for k, v in runs.items()}
        dec = s["decentralized"]["slo_attainment"]
        cen, orc = s["centralized"]["slo_attainment"], s["oracle"]["slo_attainment"]
        key = name.replace("-", "_")
        out[f"{key}_slo_ratio_max"], out[f"{key}_mean_latency_reduction_pct"] = \
            vs_single(s, "decentralized")
        out[f"{key}_gap_to_centralized_pp_max"] = 100 * max(cen[t] - dec[t] for t in dec)
        out[f"{key}_gap_to_oracle_pp_max"] = 100 * max(orc[t] - dec[t] for t in dec)
        n = sum(len(v) for v in runs.values())
        out[f"{key}_sim_requests_per_wall_s"] = n / wall
        print(f"\n{name}: {len(runs['single'])} requests, {wall:.1f} s wall", file=sys.stderr)
        for strategy, summary in s.items():
            slo = " ".join(f"{t}:{v:.0%}" for t, v in summary["slo_attainment"].items())
            print(f"  {strategy:<14} mean {summary['latency_mean_s']:7.1f} s  SLO {slo}",
                  file=sys.stderr)
    return {k: round(v, 3) for k, v in out.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1,
                        help="pool the requests of this many seeds from --seed on")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help="comma-separated scenario names")
    parser.add_argument("--scrape-interval", type=float, default=None,
                        help="how stale the decentralized nodes' load readings are (s; "
                             "0: the load as it is; default: the scenario's, 0.5)")
    args = parser.parse_args()
    res = main(args.seed, [x for x in args.only.split(",") if x], args.seeds,
               args.scrape_interval)
    for key, value in res.items():
        print(f"{key:>48}: {value}", file=sys.stderr)
    print(json.dumps(res))
