"""Testnet benchmark: `wwwserve testnet` at 20 node processes on this machine.

Runs the command twice, as a user would: a 3-node testnet (the baseline, in the same run)
and a ``--nodes N`` one (default 20), each with one sim-engine process per node and the
default hot workload, and prints what each reported, ending with one JSON line:

- requests served / failed and the latency and TTFT p50 of the N-node run;
- resident memory per node process (max and mean over the nodes, after the workload),
  and the N-node / 3-node ratio of the mean (what a node pays for a bigger network);
- start-up time until every node saw every other one, and the whole run's wall time.

Target (issue 7): the N = 20 testnet completes its workload; RSS per node <= 150 MB.

    python bench/testnet.py [--nodes 20] [--duration 30] [--rate 3]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time


def run(nodes: int, duration: float, rate: float) -> tuple[dict, float, float | None]:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "wwwserve", "testnet", "--nodes", str(nodes), "--duration",
         str(duration), "--rate", str(rate), "--json"],
        capture_output=True, text=True, timeout=1200, check=False)
    wall = time.monotonic() - start
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        sys.exit(f"wwwserve testnet --nodes {nodes} failed ({proc.returncode}):\n"
                 f"{proc.stderr[-3000:]}")
    m = re.search(r"see each other after (\d+) s", proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall, \
        float(m.group(1)) if m else None


def rss(rep: dict) -> tuple[float, float]:
    values = [row["rss_mb"] for row in rep["nodes"] if row.get("rss_mb") is not None]
    return max(values), sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=3.0)
    args = parser.parse_args()

    base, base_wall, _ = run(3, args.duration, args.rate)
    rep, wall, startup = run(args.nodes, args.duration, args.rate)
    base_max, base_mean = rss(base)
    big_max, big_mean = rss(rep)
    print(f"3 nodes:  {base['ok']}/{base['requests']} served, RSS per node max "
          f"{base_max:.0f} MB mean {base_mean:.0f} MB, {base_wall:.0f} s")
    print(f"{args.nodes} nodes: {rep['ok']}/{rep['requests']} served ({rep['failed']} failed), "
          f"latency p50 {rep['latency_s']['p50']} s, TTFT p50 {rep['ttft_s']['p50']} s, "
          f"offloaded {rep['offloaded_share']}, RSS per node max {big_max:.0f} MB mean "
          f"{big_mean:.0f} MB, all up after {startup} s, {wall:.0f} s in all")
    print(json.dumps({
        "nodes": args.nodes, "requests": rep["requests"], "served": rep["ok"],
        "failed": rep["failed"], "latency_p50_s": rep["latency_s"]["p50"],
        "ttft_p50_s": rep["ttft_s"]["p50"], "offloaded_share": rep["offloaded_share"],
        "rss_per_node_max_mb": big_max, "rss_per_node_mean_mb": round(big_mean, 1),
        "rss_per_node_mean_3_nodes_mb": round(base_mean, 1),
        "rss_mean_ratio_vs_3_nodes": round(big_mean / base_mean, 3),
        "startup_s": startup, "wall_s": round(wall, 1)}))


if __name__ == "__main__":
    main()
