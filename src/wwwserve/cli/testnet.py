"""``wwwserve testnet``: node processes on loopback, a workload and a report."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from ..config import GOSSIP_DEGREES
from ..errors import ConfigError
from ._common import print_json

# ---- testnet ----------------------------------------------------------------------------


async def _testnet(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Run the testnet; Ctrl-C or SIGTERM stops every child and ends with KeyboardInterrupt.

    The signals are taken as events (not as a KeyboardInterrupt raised wherever the code
    happens to be), so shutdown always starts from a clean cancellation.
    """
    result: dict[str, Any] = {}
    interrupted = False
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async def stop_on_signal() -> None:
                nonlocal interrupted
                async for _ in signals:
                    interrupted = True
                    nursery.cancel_scope.cancel()
                    return

            async def run() -> None:
                result.update(await _run_testnet(args, root))
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            nursery.start_soon(run)
    if interrupted:
        print("wwwserve testnet: interrupted; every node and engine was stopped",
              file=sys.stderr)
        raise KeyboardInterrupt
    return result


async def _run_testnet(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..testing.processes import (
        ProcessTestnet,
        default_profiles,
        default_targets,
        environment,
    )
    from ..testing.report import report
    from ..testing.workload import RequestResult, Workload, run_workload

    console = Console(stderr=True, quiet=args.quiet)
    workload = Workload(kind=args.workload, rate=args.rate, duration=args.duration,
                        requests=args.requests, prompt_tokens=args.prompt_tokens,
                        max_tokens=args.max_tokens, timeout=args.timeout, seed=args.seed)
    n = args.nodes
    engines = list(args.engine or ())
    profiles: str | list[str] = args.profile or default_profiles(n)
    model = args.model or (await _served_model(engines[0]) if engines else "Qwen/Qwen3-8B")
    what = (f"{len(engines)} engine URL(s)" if engines
            else "one simulated engine process each")
    console.print(f"[bold]wwwserve testnet[/]: {n} node processes on loopback with {what}, "
                  f"a private genesis, files in {root}")
    started = trio.current_time()
    async with ProcessTestnet(n, root=root, engines=engines, profiles=profiles, model=model,
                              target_token_usage=default_targets(n),
                              p_inspect=args.p_inspect,
                              config={"network": {"gossip_degree": args.gossip_degree}}
                              if args.gossip_degree is not None else None,
                              start_within=max(60.0, 4.0 * n)) as net:
        console.print(f"all {n} nodes up and see each other after "
                      f"{trio.current_time() - started:.0f} s; bootstrap "
                      f"{net.nodes[0].addresses[0]}")
        total = len(workload.arrivals(n))
        with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                      transient=False) as progress:
            task = progress.add_task(f"{workload.kind} workload", total=total)
            failed = 0

            def done(result: RequestResult) -> None:
                nonlocal failed
                failed += not result.ok
                progress.update(task, advance=1, description=(
                    f"{workload.kind} workload ({failed} failed)" if failed
                    else f"{workload.kind} workload"))

            results = await run_workload(net, workload, on_result=done)
        rep = await report(net, results)
    out = rep.to_json()
    out["environment"] = {**environment(), "nodes": n, "engines": engines or "sim",
                          "workload": workload.kind}
    return out


async def _served_model(url: str) -> str:
    import httpx

    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            resp = await client.get(url.rstrip("/").removesuffix("/v1") + "/v1/models")
            resp.raise_for_status()
            return str(resp.json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise ConfigError(f"--engine {url}: cannot read its model list ({exc}); "
                          "give the model with --model") from None


def _print_testnet_report(rep: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    lat, ttft = rep["latency_s"], rep["ttft_s"]

    def s(x: float | None) -> str:
        return f"{x:.2f}" if x is not None else "-"

    share = rep["offloaded_share"]
    console.print(f"\n[bold]{rep['ok']}/{rep['requests']} requests served[/] "
                  f"({rep['failed']} failed); latency p50/p90/p99 {s(lat['p50'])} / "
                  f"{s(lat['p90'])} / {s(lat['p99'])} s; TTFT p50/p99 {s(ttft['p50'])} / "
                  f"{s(ttft['p99'])} s; offloaded "
                  f"{f'{share:.0%}' if share is not None else '-'}")
    console.print("SLO attainment (latency at or under): " + ", ".join(
        f"{k} {v:.0%}" for k, v in rep["slo_attainment"].items()))
    if rep["errors"]:
        console.print("errors: " + ", ".join(f"{k} x{v}" for k, v in rep["errors"].items()))
    table = Table(caption="sent: by its users; local / out: served by its engine / "
                  "offloaded; in: accepted from peers; RSS: the node process")
    for col in ("node", "engine", "peers", "sent", "local", "out", "in", "credit", "stake",
                "RSS MB"):
        table.add_column(col, justify="left" if col in ("node", "engine") else "right")
    for row in rep["nodes"]:
        engine = str(row["profile"])
        table.add_row(row["name"], engine.split("/")[0] if "://" not in engine else engine,
                      str(row.get("peers", "?")),
                      str(row["sent"]), str(row.get("local", "?")),
                      str(row.get("offloaded", "?")), str(row.get("accepted", "?")),
                      f"{row.get('credit', 0):.1f}", f"{row.get('stake', 0):.1f}",
                      str(row["rss_mb"]))
    console.print(table)
    rss = [r["rss_mb"] for r in rep["nodes"] if r["rss_mb"] is not None]
    if rss:
        console.print(f"RSS per node process: max {max(rss):.0f} MB, mean "
                      f"{sum(rss) / len(rss):.0f} MB")


def cmd_testnet(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from ..testing.workload import WORKLOADS

    if not 1 <= args.nodes <= 64:
        raise ConfigError(f"--nodes: must be between 1 and 64, got {args.nodes}")
    if args.engine and len(args.engine) not in (1, args.nodes):
        raise ConfigError(f"--engine: give one URL for all nodes or one per node "
                          f"({args.nodes}), got {len(args.engine)}")
    if args.workload not in WORKLOADS:
        raise ConfigError(f"--workload: must be one of {', '.join(WORKLOADS)}")
    low, high = GOSSIP_DEGREES
    if args.gossip_degree is not None and not low <= args.gossip_degree <= high:
        raise ConfigError(f"--gossip-degree: must be between {low} and {high}, "
                          f"got {args.gossip_degree}")
    if args.out:
        root = Path(args.out)
        if root.exists() and any(root.iterdir()):
            raise ConfigError(f"--out {root}: exists and is not empty (keys and chains of "
                              "an earlier testnet would be reused); pick a new folder")
        cleanup = False
    else:
        root = Path(tempfile.mkdtemp(prefix="wwwserve-testnet-"))
        cleanup = True
    try:
        rep = trio.run(_testnet, args, root)
    finally:
        if cleanup:
            shutil.rmtree(root, ignore_errors=True)
    if args.out:
        (root / "report.json").write_text(json.dumps(rep, indent=1) + "\n")
    if args.json:
        print_json(rep)
    else:
        _print_testnet_report(rep)
        if args.out:
            print(f"report, configs, genesis and logs in {root}")
    return 0 if rep["failed"] == 0 else 1
