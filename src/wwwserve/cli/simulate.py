"""``wwwserve simulate``: the paper's experiments in virtual time."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..sim.experiment import Scenario, Timelines


# ---- experiments ------------------------------------------------------------------------


def cmd_simulate(args: argparse.Namespace) -> int:
    from ..sim.experiment import STRATEGIES, list_scenarios, load_scenario

    if args.list or args.scenario is None:
        for name, description in list_scenarios().items():
            print(f"{name:<22} {description}")
        print(f"{'paper':<22} every scenario above, into one report folder")
        return 0
    strategies = [x.strip() for x in (args.strategies or "").split(",") if x.strip()]
    for st in strategies:
        if st not in STRATEGIES:
            raise ConfigError(f"--strategies: unknown strategy {st!r}; one of "
                              f"{', '.join(STRATEGIES)}")
    if args.scenario == "paper":
        root = Path(args.out or f"results/paper-seed{args.seed}")
        index = [f"# wwwserve simulate paper (seed {args.seed})", ""]
        for name in list_scenarios():
            text = _simulate_one(load_scenario(name), strategies, args.seed, root / name,
                                 args.quiet)
            index += [f"## [{name}]({name}/summary.md)", "", text.split("\n", 3)[3], ""]
        root.mkdir(parents=True, exist_ok=True)
        (root / "README.md").write_text("\n".join(index))
        print(f"wrote {root}/README.md and one folder per scenario")
        return 0
    scenario = load_scenario(args.scenario)
    _simulate_one(scenario, strategies, args.seed,
                  Path(args.out or f"results/{scenario.name}-seed{args.seed}"), args.quiet)
    return 0


def _simulate_one(scenario: Scenario, strategies: list[str], seed: int, out: Path,
                  quiet: bool) -> str:
    """Run one scenario, write its folder, print and return its summary."""
    import time

    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from ..sim.experiment import (
        STRATEGIES,
        credit_markdown,
        make_workload,
        per_node_markdown,
        results_json,
        run_strategy,
        summary_markdown,
        write_credit_plot,
        write_per_node_plot,
        write_plots,
        write_sweep_plot,
        write_timeline_plot,
    )

    strategies = strategies or list(scenario.strategies) or list(STRATEGIES)
    sweep = scenario.sweep
    # a sweep runs the decentralized strategy once per value (runs named by the value)
    plan = [(f"{sweep.param}={v:g}", "decentralized", sweep.apply(scenario, v))
            for v in sweep.values] if sweep is not None else \
        [(st, st, scenario) for st in strategies]
    n = len(make_workload(scenario, seed))
    runs = {}
    lines: dict[str, Timelines] = {}
    wall = 0.0
    with Progress(TextColumn("{task.description:<24}"), BarColumn(),
                  TextColumn("{task.completed:.0f}/{task.total:.0f} s simulated"),
                  TimeElapsedColumn(), transient=not sys.stderr.isatty(),
                  disable=quiet) as progress:
        for label, st, sc in plan:
            task = progress.add_task(f"{scenario.name}: {label}", total=sc.duration)

            def advance(now: float, task: TaskID = task) -> None:
                progress.update(task, completed=now)

            t = time.perf_counter()
            lines[label] = {}
            runs[label] = run_strategy(sc, st, seed, progress=advance, timelines=lines[label])
            wall += time.perf_counter() - t
            progress.update(task, completed=sc.duration)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(results_json(scenario, seed, runs, lines))
    summary = summary_markdown(scenario, runs)
    for label, st, sc in plan:
        if st == "decentralized":
            summary += f"\n## Providers ({label})\n\n" + per_node_markdown(sc, runs[label])
            if sc.ledger:
                summary += f"\n## Credit per class ({label}, on the ledger)\n\n" \
                    + credit_markdown(sc, lines[label])
    speed = (f"\n{n} requests x {len(plan)} runs simulated in {wall:.1f} s of wall "
             f"time: {n * len(plan) / max(wall, 1e-9):.0f} requests per wall second, "
             f"virtual/wall time {scenario.duration * len(plan) / max(wall, 1e-9):.0f}x\n")
    (out / "summary.md").write_text(summary + speed)
    if importlib.util.find_spec("matplotlib") is None:  # the lean install: no plots
        print(summary + speed)
        print(f"wrote {out}/results.json and {out}/summary.md; plots skipped: matplotlib "
              "is not installed (pip install 'wwwserve[sim]')")
        return summary + speed
    plots = write_plots(scenario, runs, out)
    if sweep is not None:
        plots.append(write_sweep_plot(scenario, sweep, {
            v: runs[label] for v, (label, _, _) in zip(sweep.values, plan, strict=True)}, out))
    elif "decentralized" in runs:
        plots.append(write_per_node_plot(scenario, runs["decentralized"], out))
        plots.append(write_timeline_plot(scenario, lines["decentralized"], out,
                                         "decentralized"))
        if scenario.ledger:
            plots.append(write_credit_plot(scenario, lines["decentralized"], out))
    print(summary + speed)
    print(f"wrote {out}/results.json, {out}/summary.md and "
          f"{', '.join(p.name for p in plots)}")
    return summary + speed
