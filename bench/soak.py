"""Soak: many seeded networks with faults (wwwserve.sim.dst), invariants checked on each.

Runs seeds ``--start`` .. ``--start + --seeds - 1`` (5 to ``--max-nodes`` nodes each, with
ledgers, ``--duration`` virtual seconds of requests under random faults), one after another,
each in a fresh trio run under a virtual clock, and prints:

- requests served per virtual second held under faults (and per wall second: the
  simulator's speed), served and failed-with-a-clear-error counts;
- faults injected, by kind;
- how far the final checkpoint trails the tip at the end of each run (blocks);
- invariant violations (must be 0), each with the seed that reproduces it:
  ``python -c "from pathlib import Path; from wwwserve.sim.dst import run;
  print(run(SEED, Path('/tmp/x')).violations)"``.

Ends with one JSON line. CI runs 200 seeds of 5-8 nodes (tests/sim/test_dst.py); this script
is for thousands:

    python bench/soak.py [--seeds 100] [--start 0] [--max-nodes 30] [--duration 90]
        [--adversarial]

``--adversarial``: the last node of every network also attacks (wwwserve.sim.attacks:
forged settlements, equivocation, side-block and pool floods, free-riding strangers,
lying heartbeats, stalled sync), and the honest stakes and bounds are checked too.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

from wwwserve.sim.attacks import STRATEGIES
from wwwserve.sim.dst import FAULT_KINDS, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--max-nodes", type=int, default=30)
    parser.add_argument("--duration", type=float, default=90.0)
    parser.add_argument("--adversarial", action="store_true",
                        help="the last node of each network also plays attacker strategies")
    args = parser.parse_args()

    faults: Counter[str] = Counter()
    served = failed = 0
    virtual = 0.0
    violations: list[tuple[int, str]] = []
    lags: list[int] = []
    started = time.monotonic()
    for seed in range(args.start, args.start + args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                result = run(seed, Path(tmp), max_nodes=args.max_nodes,
                             duration=args.duration, adversarial=args.adversarial)
            except Exception as exc:  # a node crashed the run: a violation, and go on
                print(f"seed {seed}: VIOLATION the run crashed: {exc!r}", flush=True)
                violations.append((seed, f"crashed: {exc!r}"))
                continue
        faults.update(result.faults)
        lags.append(result.final_lag)
        served += result.served
        failed += result.failed
        virtual += args.duration
        violations += [(seed, v) for v in result.violations]
        for v in result.violations:
            print(f"seed {seed}: VIOLATION {v}", flush=True)
        if (seed - args.start + 1) % 10 == 0:
            print(f"{seed - args.start + 1}/{args.seeds} seeds, {served} served, {failed} "
                  f"failed, {len(violations)} violations, "
                  f"{time.monotonic() - started:.0f} s", flush=True)
    wall = time.monotonic() - started
    print(f"{args.seeds} seeds: {served} requests served, {failed} ended with a clear error; "
          f"{served / virtual:.2f} served per virtual second under faults; "
          f"{served / wall:.1f} per wall second")
    print("faults: " + ", ".join(f"{k} {faults[k]}" for k in FAULT_KINDS))
    if args.adversarial:
        print("attacks: " + ", ".join(f"{k} {faults['attack_' + k]}" for k in STRATEGIES))
    lags.sort()
    print(f"final checkpoint behind the tip at the end: median {lags[len(lags) // 2]}, "
          f"max {lags[-1]} blocks")
    print(f"invariant violations: {len(violations)}")
    print(json.dumps({
        "seeds": args.seeds, "served": served, "failed_with_error": failed,
        "served_per_virtual_s": round(served / virtual, 3),
        "served_per_wall_s": round(served / wall, 1),
        "faults": {k: faults[k] for k in FAULT_KINDS},
        "attacks": {k: faults["attack_" + k] for k in STRATEGIES} if args.adversarial else {},
        "final_lag_median_blocks": lags[len(lags) // 2], "final_lag_max_blocks": lags[-1],
        "invariant_violations": len(violations), "wall_s": round(wall, 1)}))


if __name__ == "__main__":
    main()
