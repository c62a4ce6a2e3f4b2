"""What the paper's comparisons depend on: two sweeps of one scenario setting each.

- ``fluctuating`` with the mean output length swept (the paper says only "math with
  thinking on", up to 8192 tokens): how much any scheduler can gain depends on how loaded
  the busy and the quiet nodes are;
- ``heterogeneous-models`` with every node's ``target_token_usage`` swept: on A100-80G
  the KV pool of an 8B model is large, so the authors' default target (0.6) is never
  reached and the default policy never offloads.

For each value, the same seeds are served by single-node, decentralized and the oracle
(and the authors' centralized rule for the first sweep); printed are the best SLO ratio to
single-node over the thresholds and the change in mean latency against single-node, for
decentralized and for the oracle (the ceiling). Ends with one JSON line.

    python bench/sensitivity.py [--seeds 3]      (about 3 min at 3 seeds)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

from paper import pooled, vs_single  # bench/paper.py, beside this script

from wwwserve.sim.experiment import Scenario, load_scenario, summarize


def compare(scenario: Scenario, seeds: int, strategies: tuple[str, ...]) -> dict[str, Any]:
    """Summaries per strategy of ``seeds`` pooled runs."""
    return {s: summarize(v, scenario.slo_thresholds)
            for s, v in pooled(scenario, strategies, 0, seeds).items()}


def figures(s: dict[str, Any], who: str) -> tuple[float, float]:
    """(best SLO ratio to single-node, mean latency reduction in %) of strategy ``who``."""
    ratio, reduction = vs_single(s, who)
    return round(ratio, 3), round(reduction, 1)


def main(seeds: int) -> dict[str, float]:
    out: dict[str, float] = {}
    base = load_scenario("fluctuating")
    print("fluctuating, mean output tokens swept:", file=sys.stderr)
    for mean in (4000, 5000, 6000, 7000):
        t = time.perf_counter()
        s = compare(dataclasses.replace(base, output_tokens_mean=mean), seeds,
                    ("single", "centralized", "decentralized", "oracle"))
        dec, orc, cen = figures(s, "decentralized"), figures(s, "oracle"), \
            figures(s, "centralized")
        out[f"fluctuating_out{mean}_dec_slo_ratio_max"] = dec[0]
        out[f"fluctuating_out{mean}_dec_latency_reduction_pct"] = dec[1]
        out[f"fluctuating_out{mean}_oracle_slo_ratio_max"] = orc[0]
        out[f"fluctuating_out{mean}_oracle_latency_reduction_pct"] = orc[1]
        print(f"  {mean:>5} tokens: decentralized {dec[0]:.2f}x, {-dec[1]:+.1f}%  "
              f"centralized {cen[0]:.2f}x, {-cen[1]:+.1f}%  oracle {orc[0]:.2f}x, "
              f"{-orc[1]:+.1f}%  ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    base = load_scenario("heterogeneous-models")
    print("heterogeneous-models, every node's target_token_usage swept:", file=sys.stderr)
    for target in (0.6, 0.3, 0.15):
        t = time.perf_counter()
        nodes = tuple(dataclasses.replace(n, target_token_usage=target) for n in base.nodes)
        s = compare(dataclasses.replace(base, nodes=nodes), seeds,
                    ("single", "decentralized", "oracle"))
        dec, orc = figures(s, "decentralized"), figures(s, "oracle")
        key = f"heterogeneous_target{int(target * 100)}"
        out[f"{key}_dec_slo_ratio_max"] = dec[0]
        out[f"{key}_dec_latency_reduction_pct"] = dec[1]
        out[f"{key}_oracle_slo_ratio_max"] = orc[0]
        out[f"{key}_oracle_latency_reduction_pct"] = orc[1]
        print(f"  target {target:.2f}: decentralized {dec[0]:.2f}x, {-dec[1]:+.1f}%  "
              f"oracle {orc[0]:.2f}x, {-orc[1]:+.1f}%  ({time.perf_counter() - t:.0f} s)",
              file=sys.stderr)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds pooled per value")
    args = parser.parse_args()
    print(json.dumps(main(args.seeds)))
