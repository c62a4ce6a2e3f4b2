"""Duel-and-judge benchmark: win rates of simulated quality classes against the paper's.

For each study (model size: Qwen3-8B / 4B / 0.6B; quantization: fp8 / int4-128 / int4-32)
and each seed, a virtual-time network of 9 providers (3 per class) and 3 user-only nodes on
a private ledger runs ``--seconds`` of load with every offloaded request duelled
(``p_inspect`` 1.0, 3 judges; 1% loser and minority-judge penalties, so no class is priced
out of the draw and judges' noise does not drown the duels' outcomes in credit).
Printed per study: each class's measured win rate (per pair of classes, over cross-class
duels, ties half, averaged over the opponents), its error against the paper's rate, the
model's expected rate (:func:`wwwserve.duel.judge.class_win_rates`, the baseline computed in
the same run), mean credit per class, and duels settled per wall-clock second. Ends with one
JSON line.

Targets (issue 5): every class within 0.03 of 0.57 / 0.53 / 0.39 and 0.54 / 0.49 / 0.47.

    python bench/duels.py [--seeds 1 2 3] [--seconds 400]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio
import trio.testing

from wwwserve.config import DuelParams
from wwwserve.duel.judge import class_win_rates
from wwwserve.engines import get_profile
from wwwserve.overlay import MemoryNetwork
from wwwserve.sim import seed_trio_scheduler
from wwwserve.sim.duels import Spec, start

STUDIES = {
    "size": ({"8b": "a100-80g/qwen3-8b", "4b": "a100-80g/qwen3-4b",
              "0.6b": "a100-80g/qwen3-0.6b"}, (0.57, 0.53, 0.39)),
    "quant": ({"fp8": "a100-80g/qwen3-8b-fp8", "int4-128": "a100-80g/qwen3-8b-int4-128",
               "int4-32": "a100-80g/qwen3-8b-int4-32"}, (0.54, 0.49, 0.47)),
}


async def run(classes: dict[str, str], seed: int, seconds: float, data: Path
              ) -> tuple[dict[str, float], int, dict[str, float], int]:
    seed_trio_scheduler(seed)
    specs = [Spec(c, p) for c, p in classes.items() for _ in range(3)]
    specs += [Spec("user", credit=100_000) for _ in range(3)]
    async with MemoryNetwork(seed=seed, latency=0.005) as net, trio.open_nursery() as nursery:
        network = await start(nursery, net, specs, data, seed,
                              duel=DuelParams(p_inspect=1.0), duel_loser_ppm=10_000,
                              duel_minority_ppm=10_000)
        for n in network.nodes:
            n.dispatcher.reward = 0.0  # only quality moves credit
        await network.drive(seconds, 3.0, seed)
        await trio.sleep(30)
        rates, duels = network.win_rates(list(classes))
        credit = {c: statistics.mean(network.credit(n) for n in network.of(c))
                  for c in classes}
        settled = len(network.settlements())
        nursery.cancel_scope.cancel()
    return rates, duels, credit, settled


def main(seeds: list[int], seconds: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for study, (classes, targets) in STUDIES.items():
        expected = class_win_rates([get_profile(p).quality for p in classes.values()])
        errors = []
        settled_total, wall_total = 0, 0.0
        for seed in seeds:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                rates, duels, credit, settled = trio.run(
                    run, classes, seed, seconds, Path(tmp),
                    clock=trio.testing.MockClock(autojump_threshold=0))
                wall_total += time.perf_counter() - t0
            settled_total += settled
            print(f"{study} seed {seed}: {duels} cross-class duels", file=sys.stderr)
            for (c, target), exp in zip(zip(classes, targets, strict=True), expected,
                                        strict=True):
                err = rates[c] - target
                errors.append(abs(err))
                print(f"  {c:>9}: win rate {rates[c]:.3f} (paper {target:.2f}, error "
                      f"{err:+.3f}; model {exp:.3f})  credit {credit[c]:8.1f}", file=sys.stderr)
                out[f"{study}_{c}_win_rate_seed{seed}"] = round(rates[c], 4)
            ordered = [credit[c] for c in classes]
            out[f"{study}_credit_in_quality_order_seed{seed}"] = float(
                ordered == sorted(ordered, reverse=True))
        out[f"{study}_max_abs_error_vs_paper"] = round(max(errors), 4)
        out[f"{study}_mean_abs_error_vs_paper"] = round(statistics.mean(errors), 4)
        out[f"{study}_duels_settled_per_wall_s"] = round(settled_total / wall_total, 2)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--seconds", type=float, default=400.0,
                        help="virtual seconds of load per run")
    args = parser.parse_args()
    print(json.dumps(main(args.seeds, args.seconds)))
