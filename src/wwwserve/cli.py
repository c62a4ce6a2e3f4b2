"""The ``wwwserve`` command line.

Exit codes: 0 success (including Ctrl-C of a long-running command), 1 runtime failure,
2 bad usage or bad input (config, key file). Errors are one line on stderr, no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from . import __version__
from .config import GOSSIP_DEGREES, NodeConfig, NodeParams, load_config
from .errors import ConfigError, IdentityError, WWWServeError
from .identity import Identity, load_or_create_identity

if TYPE_CHECKING:
    from .ledger import Chain
    from .sim.experiment import Scenario, Timelines

__all__ = ["main"]

logger = logging.getLogger(__name__)

EPILOG = """examples:
  wwwserve demo                                   # 4 nodes, a burst offloaded, live view
  wwwserve node node_configs/node1.yaml           # run one node from its config
  wwwserve sim-engine --port 30000                # a simulated SGLang server (no GPU)
  wwwserve testnet --nodes 5                      # 5 node processes, a workload, a report
  wwwserve status node_configs/node1.yaml         # peers, load, credit of a running node
  wwwserve simulate fluctuating                   # the paper's experiment, virtual time
  wwwserve genesis node_configs/*.yaml -o genesis.yaml   # a private network's genesis
  wwwserve ledger show node_configs/node1.yaml    # a node's chain on disk
  wwwserve keygen keys/my-node.key                # create a key file (0600)
  wwwserve id node_configs/node1.yaml             # print a node's peer id
"""


def _setup_logging(verbosity: int, level: str = "WARNING",
                   libp2p_level: str = "CRITICAL") -> None:
    """Logging for this process (wwwserve.log): ``level`` lowered by 10 per ``-v``;
    py-libp2p at ``libp2p_level``, or DEBUG with ``-vvv``."""
    from .log import setup_logging

    if verbosity >= 3 or libp2p_level != "CRITICAL":
        # py-libp2p re-quietens its logger when first imported: import it first
        from .overlay import libp2p as _  # noqa: F401
    base = logging.getLevelNamesMapping()[level]
    setup_logging(max(logging.DEBUG, base - 10 * verbosity),
                  libp2p_level="DEBUG" if verbosity >= 3 else libp2p_level)


def _print_json(obj: object) -> None:
    print(json.dumps(obj), flush=True)


# ---- node -------------------------------------------------------------------------------


async def _run_node(cfg: NodeConfig, json_events: bool) -> None:
    from .membership import MembershipEventKind
    from .node import Node

    node = Node(cfg, rng=random.Random())
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with node, node.membership.events() as events, trio.open_nursery() as nursery:
            if json_events:
                _print_json({"event": "started", "peer_id": node.peer_id,
                             "addresses": list(node.addresses), "gateway": node.gateway_url})
            else:
                print(f"node {cfg.node.name} {node.peer_id}")
                for addr in node.addresses:
                    print(f"  listening on {addr}")
                if node.gateway_url:
                    print(f"  OpenAI-compatible gateway at {node.gateway_url}/v1")
                sys.stdout.flush()

            async def stop_on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            async for ev in events:
                if ev.kind is MembershipEventKind.UPDATED:
                    continue  # a live peer's routine heartbeat: the table is unchanged
                peers = sorted(node.peers)
                if json_events:
                    _print_json({"event": ev.kind.value, "peer_id": ev.peer_id,
                                 "peers": peers})
                else:
                    print(f"{ev.kind.value:>9} {ev.peer_id}  ({len(peers)} peers)", flush=True)


def cmd_node(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    _setup_logging(args.verbose, cfg.logging.level, cfg.logging.libp2p_level)
    trio.run(_run_node, cfg, args.json_events)
    return 0


# ---- sim-engine -------------------------------------------------------------------------


async def _sim_engine(args: argparse.Namespace) -> None:
    from .engines import SimEngine, get_profile
    from .http import SimEngineServer

    profile = get_profile(args.profile, args.backend)
    engine = SimEngine(profile, models=(args.model or profile.model,), seed=args.seed,
                       stream_interval=args.stream_interval,
                       mean_output_tokens=args.mean_output_tokens,
                       admission=args.admission)
    server = SimEngineServer(engine, args.host, args.port, api_key=args.api_key)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.run)
            if args.json:
                _print_json({"event": "started", "url": url, "model": engine.models[0],
                             "profile": profile.name})
            else:
                print(f"simulated {profile.name} ({args.backend}) serving {engine.models[0]} "
                      f"at {url}/v1 (metrics at {url}/metrics)", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return


def cmd_sim_engine(args: argparse.Namespace) -> int:
    from .engines import profile_names

    if args.list:
        for name in profile_names():
            print(name)
        return 0
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: must be in [0, 65535], got {args.port}")
    trio.run(_sim_engine, args)
    return 0


# ---- demo -------------------------------------------------------------------------------


async def _demo(n_nodes: int, duration: float, burst: int) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from .config import (
        GatewayParams,
        MembershipParams,
        ModelConfig,
        ModelDispatchParams,
        NetworkParams,
        ServerParams,
    )
    from .engines import CompletionRequest
    from .node import Node
    from .overlay import Libp2pOverlay

    console = Console()
    params = MembershipParams(heartbeat_interval=0.5, suspect_timeout=1.5, peer_timeout=3.0)
    model = "Qwen/Qwen3-8B"
    nodes: list[Node] = []
    names: dict[str, str] = {}
    outcome: dict[str, int] = {"ok": 0, "failed": 0}
    all_done = trio.Event()

    def profile_of(i: int) -> str:
        # node0 is a small GPU that its users overload; its peers have H100s
        return "rtx3090/qwen3-8b" if i == 0 else "h100/qwen3-8b"

    def view() -> Table:
        table = Table(title=f"{burst} requests from node0's users: {outcome['ok']} done, "
                      f"{outcome['failed']} failed", caption="local: served by its own engine; "
                      "out: offloaded to peers; in: accepted from peers")
        for col in ("node", "gpu", "peers", "run", "queue", "kv", "local", "out", "in",
                    "credit", "stake"):
            table.add_column(col, justify="left" if col in ("node", "gpu") else "right")
        for i, node in enumerate(nodes):
            load = node.dispatcher.models[0].engine.load()
            st = node.dispatcher.stats
            table.add_row(names[node.peer_id], profile_of(i).split("/")[0],
                          str(len(node.peers)), str(load.running), str(load.queued),
                          f"{load.token_usage:.0%}", str(st["local"]), str(st["offloaded"]),
                          str(st["accepted"]), f"{node.credit.balance():.0f}",
                          f"{node.credit.stake():.0f}")
        return table

    async def run_node(i: int, bootstrap: tuple[str, ...], started: trio.Event) -> None:
        ident = Identity.generate()
        names[ident.peer_id] = f"node{i}"
        cfg = NodeConfig(
            node=NodeParams(name=f"node{i}"), membership=params,
            gateway=GatewayParams(enabled=False),
            server_params=ServerParams(offload_frequency=0.9, queue_frequency=0.5,
                                       accept_frequency=0.9),
            models=(ModelConfig(model_path=model, engine="sim", sim_profile=profile_of(i),
                                dispatch_params=ModelDispatchParams(target_token_usage=0.3)),),
            network=NetworkParams(network_id="wwwserve-demo", bootstrap=bootstrap))
        node = Node(cfg, identity=ident, overlay=Libp2pOverlay(ident), rng=random.Random())
        async with node:
            nodes.append(node)
            started.set()
            await trio.sleep_forever()

    async def user_request(i: int) -> None:
        req = CompletionRequest(request_id=f"demo-{i}", model=model, prompt="tell me " * 400,
                                max_tokens=120, ignore_eos=True, timeout=max(1.0, duration))
        try:
            await nodes[0].complete(req)
            outcome["ok"] += 1
        except WWWServeError:
            outcome["failed"] += 1
        if outcome["ok"] + outcome["failed"] == burst:
            all_done.set()

    console.print(f"[bold]wwwserve demo[/]: {n_nodes} nodes on loopback (libp2p: TCP, Noise, "
                  "Yamux, GossipSub) with simulated engines, joining through node0")
    with trio.move_on_after(duration):
        async with trio.open_nursery() as nursery:
            first = trio.Event()
            nursery.start_soon(run_node, 0, (), first)
            await first.wait()
            boot = (nodes[0].addresses[0],)
            console.print(f"bootstrap address: {boot[0]}")
            for i in range(1, n_nodes):
                ev = trio.Event()
                nursery.start_soon(run_node, i, boot, ev)
                await ev.wait()
            with trio.move_on_after(min(5.0, duration / 3)):
                while any(len(n.peers) < n_nodes - 1 for n in nodes):  # noqa: ASYNC110
                    await trio.sleep(0.1)  # (a display loop: polling the tables is fine)
            console.print(f"all {n_nodes} nodes see each other; node0's users send a burst "
                          f"of {burst} requests")
            with Live(view(), console=console, refresh_per_second=4) as live:
                async with trio.open_nursery() as users:
                    async def refresh() -> None:
                        while True:
                            live.update(view())
                            await trio.sleep(0.25)

                    users.start_soon(refresh)
                    for i in range(burst):
                        users.start_soon(user_request, i)
                        await trio.sleep(0.02)
                    if burst:
                        await all_done.wait()
                    live.update(view())
                    users.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
    if nodes:
        st = nodes[0].dispatcher.stats
        copies = (f", plus {st['duel_copies']} duel copies sent to a second executor"
                  if st["duel_copies"] else "")
        console.print(f"\n[bold]summary[/]: {outcome['ok']}/{burst} requests served "
                      f"({st['local']} on node0, {st['offloaded']} offloaded to peers"
                      f"{copies}); node0 paid {st['paid']} credits")


def cmd_demo(args: argparse.Namespace) -> int:
    if not 2 <= args.nodes <= 30:
        raise ConfigError(f"--nodes: must be between 2 and 30, got {args.nodes}")
    if args.burst < 0:
        raise ConfigError(f"--burst: must be >= 0, got {args.burst}")
    trio.run(_demo, args.nodes, args.duration, args.burst)
    return 0


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

    from .testing.processes import (
        ProcessTestnet,
        default_profiles,
        default_targets,
        environment,
    )
    from .testing.report import report
    from .testing.workload import RequestResult, Workload, run_workload

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

    from .testing.workload import WORKLOADS

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
        _print_json(rep)
    else:
        _print_testnet_report(rep)
        if args.out:
            print(f"report, configs, genesis and logs in {root}")
    return 0 if rep["failed"] == 0 else 1


# ---- status -----------------------------------------------------------------------------


def _gateway_url(target: str) -> str:
    if target.startswith(("http://", "https://")):
        return target.rstrip("/").removesuffix("/v1")
    cfg = load_config(target)
    host = cfg.gateway.host if cfg.gateway.host not in ("0.0.0.0", "::") else "127.0.0.1"
    if not cfg.gateway.enabled or cfg.gateway.port == 0:
        raise ConfigError(f"{target}: gateway: this node has no fixed gateway port; pass the "
                          "gateway URL instead")
    return f"http://{host}:{cfg.gateway.port}"


async def _fetch_json(url: str, path: str, api_key: str | None) -> dict[str, Any]:
    """GET ``url + path`` from a node's gateway; one-line errors if it does not answer."""
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=api_key or "none",
                                max_retries=0, timeout=10.0)
    try:
        got = await client.get(url + path, cast_to=object)
    except openai.APIConnectionError:
        raise WWWServeError(f"no node answers at {url} (is it running?)") from None
    except openai.APIStatusError as exc:
        raise WWWServeError(f"{url}{path} answered HTTP {exc.status_code}: "
                            f"{exc.message}") from None
    finally:
        await client.close()
    if not isinstance(got, dict):
        raise WWWServeError(f"{url}{path} did not answer a JSON object")
    return got


def cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    url = _gateway_url(args.target)
    status = trio.run(_fetch_json, url, "/status", args.api_key)
    if args.json:
        _print_json(status)
        return 0
    console = Console()
    console.print(f"[bold]{status.get('name')}[/] {status.get('peer_id')}  credit "
                  f"{status.get('credit', 0):.1f}  stake {status.get('stake', 0):.1f}")
    models = Table(title="models")
    for col in ("model", "healthy", "kv", "running", "queued"):
        models.add_column(col)
    for m in status.get("models", []):
        models.add_row(m["model"], "yes" if m["healthy"] else "NO", f"{m['token_usage']:.0%}",
                       str(m["running"]), str(m["queued"]))
    console.print(models)
    peers = Table(title="peers")
    for col in ("peer id", "status", "stake", "credit", "models"):
        peers.add_column(col)
    for p in status.get("peers", []):
        pid = str(p["peer_id"])
        peers.add_row(f"{pid[:12]}…{pid[-6:]}", p["status"], f"{p['stake']:.1f}",
                      f"{p['credit']:.1f}", ", ".join(p["models"]))
    console.print(peers)
    dispatch = status.get("dispatch", {})
    console.print("dispatch: " + (", ".join(f"{k} {v}" for k, v in sorted(
        dispatch.items())) if isinstance(dispatch, dict) and dispatch else "nothing yet"))
    duels = status.get("duels", {})
    console.print("duels: " + (", ".join(f"{k} {v}" for k, v in sorted(
        duels.items())) if isinstance(duels, dict) and duels else "none yet"))
    ratings = status.get("ratings", {})
    if isinstance(ratings, dict) and ratings:
        table = Table(title="ratings (Bradley-Terry, Elo scale, from settled duels)")
        for col in ("peer id", "rating", "won", "lost", "tie"):
            table.add_column(col)
        for pid, r in sorted(ratings.items(), key=lambda kv: -kv[1]["rating"]):
            table.add_row(f"{pid[:12]}…{pid[-6:]}", f"{r['rating']:.0f}", str(r["wins"]),
                          str(r["losses"]), str(r["ties"]))
        console.print(table)
    return 0


# ---- keys -------------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.exists():
        raise IdentityError(f"{path}: already exists; refusing to overwrite a key file")
    ident = load_or_create_identity(path)
    print(ident.peer_id)
    return 0


def cmd_id(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.suffix in (".yaml", ".yml"):
        key_path = load_config(path).node.identity_path
        if not key_path.exists():
            raise IdentityError(f"{key_path}: no key yet (it is created on the node's first "
                                "start, or with `wwwserve keygen`)")
    else:
        key_path = path
    try:
        data = key_path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"{key_path}: cannot read key file: {exc.strerror}") from None
    print(Identity.from_libp2p_bytes(data).peer_id)
    return 0


# ---- ledger -----------------------------------------------------------------------------


def cmd_genesis(args: argparse.Namespace) -> int:
    import time

    from .ledger import Allocation, Genesis, micro

    configs = [load_config(c) for c in args.configs]
    networks = {c.network.network_id for c in configs}
    network = args.network or (networks.pop() if len(networks) == 1 else None)
    if network is None:
        raise ConfigError(f"the configs name different networks {sorted(networks)}; "
                          "pick one with --network")
    allocations = []
    for path, cfg in zip(args.configs, configs, strict=True):
        key = cfg.node.identity_path
        created = not key.exists()
        ident = load_or_create_identity(key)
        lp = cfg.ledger_params
        allocations.append(Allocation.of_credit(ident.peer_id, lp.initial_credit,
                                                lp.initial_staked))
        note = " (new key)" if created else ""
        print(f"{path}: {ident.peer_id}{note} credit {lp.initial_credit:g} "
              f"staked {lp.initial_staked:g}", file=sys.stderr)
    try:
        genesis = Genesis(network=network, time=args.time if args.time is not None
                          else float(int(time.time())), allocations=tuple(allocations),
                          slot_length=args.slot_length, join_grant=micro(args.join_grant),
                          unbonding_blocks=args.unbonding_blocks,
                          duel_reward=micro(args.duel_reward),
                          duel_loser_ppm=round(args.duel_loser_penalty * 1e6),
                          duel_minority_ppm=round(args.duel_minority_penalty * 1e6),
                          duel_silent_ppm=round(args.duel_silent_penalty * 1e6))
    except ValueError as exc:
        raise ConfigError(f"genesis: {exc}") from None
    text = genesis.to_yaml()
    if args.output == "-":
        print(text, end="")
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.output} (network {network}, {len(allocations)} members, "
              f"id {genesis.id.hex()[:16]})", file=sys.stderr)
    return 0


def _open_chain(args: argparse.Namespace) -> tuple[Chain, Path]:
    """The chain replayed from a node's block file (config, or --data-dir + --genesis)."""
    from .ledger import BlockStore, Chain, Genesis
    from .ledger.service import replay

    if args.config is not None:
        cfg = load_config(args.config)
        if cfg.network.genesis is None:
            raise ConfigError(f"{args.config}: network.genesis is not set (no ledger)")
        genesis_path, data_dir = cfg.network.genesis, cfg.node.data_dir
    else:
        if args.genesis is None or args.data_dir is None:
            raise ConfigError("give a node config or gateway URL, or both --data-dir and "
                              "--genesis")
        genesis_path, data_dir = Path(args.genesis), Path(args.data_dir)
    chain = Chain(Genesis.load(genesis_path))
    store = BlockStore(data_dir / "blocks")
    replay(chain, store, repair=False)  # the node may be running and appending
    return chain, store.path


def cmd_ledger(args: argparse.Namespace) -> int:
    from .ledger import credits
    from .ledger.service import ledger_view

    running = args.config is not None and args.config.startswith(("http://", "https://"))
    if running:
        if args.action == "verify":
            raise ConfigError("verify replays a block file: give the node's config or "
                              "--data-dir and --genesis, not a URL")
        view = trio.run(_fetch_json, _gateway_url(args.config), "/ledger", args.api_key)
        source = args.config
    else:
        chain, path = _open_chain(args)
        source = str(path)
        if args.action == "verify":
            state = chain.state
            expected = state.genesis_supply + state.issued - state.burned
            if state.total() != expected:
                raise WWWServeError(f"{path}: total credit {state.total()} != {expected}")
            print(f"{path}: OK: {chain.height} block(s) verified (signatures, proposers, "
                  f"transactions, state roots); total credit {credits(state.total()):g}")
            return 0
        view = ledger_view(chain, last=args.last)
    if args.action == "balance":
        rows = [r for r in view.get("accounts", [])
                if args.account is None or r["account"] == args.account]
        if args.account is not None and not rows:
            raise WWWServeError(f"{source}: no account {args.account}")
        if args.json:
            _print_json(rows)
            return 0
        for r in rows:
            print(f"{r['account']}  balance {r['balance']:>12.6f}  stake "
                  f"{r['stake']:>10.6f}  unbonding {r['unbonding']:>10.6f}  "
                  f"nonce {r['nonce']}")
        return 0
    view.pop("accounts", None)
    view["blocks"] = view.get("blocks", [])[-args.last:] if args.last > 0 else []
    if args.json:
        _print_json(view)
        return 0
    print(f"network {view['network']}  height {view['height']}  final "
          f"{view['finalized_height']}  tip {str(view['tip'])[:16]}  total credit "
          f"{view['total_credit']:g}  pending {view['pending']}")
    for b in view["blocks"]:
        print(f"  #{b['height']:<6} slot {b['slot']:<8} by {b['proposer']}  {b['txs']} tx")
    return 0


# ---- experiments ------------------------------------------------------------------------


def cmd_simulate(args: argparse.Namespace) -> int:
    from .sim.experiment import STRATEGIES, list_scenarios, load_scenario

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

    from .sim.experiment import (
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


# ---- entry point ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="wwwserve", description="A decentralized market of LLM services over libp2p.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"wwwserve {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-vvv includes libp2p)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_,
                              epilog=f"example:\n  {example}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = add("demo", "N nodes on loopback with simulated engines; a burst on node0 is offloaded",
            "wwwserve demo --nodes 4 --burst 40")
    p.add_argument("--nodes", type=int, default=4, help="number of nodes (2-30, default 4)")
    p.add_argument("--duration", type=float, default=30.0,
                   help="give up after this many seconds (default 30)")
    p.add_argument("--burst", type=int, default=40,
                   help="requests node0's users send at once (default 40)")
    p.set_defaults(func=cmd_demo)

    p = add("node", "run one node from a YAML config until Ctrl-C",
            "wwwserve node node_configs/node1.yaml")
    p.add_argument("config", help="node YAML file (see node_configs/)")
    p.add_argument("--json-events", action="store_true",
                   help="print one JSON object per line for the start and each change of the "
                   "peer table (joined, suspected, recovered, rejoined, left)")
    p.set_defaults(func=cmd_node)

    p = add("sim-engine", "serve a simulated GPU engine over an SGLang-compatible HTTP API",
            "wwwserve sim-engine --profile h100/qwen3-8b --port 30000")
    p.add_argument("--profile", default="a100-80g/qwen3-8b",
                   help="GPU/model profile (default a100-80g/qwen3-8b; --list shows all)")
    p.add_argument("--backend", default="flashinfer",
                   help="attention backend: flashinfer, triton or sdpa (default flashinfer)")
    p.add_argument("--model", default=None,
                   help="model name to serve (default: the profile's model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=30000, help="port (0 picks a free one)")
    p.add_argument("--seed", type=int, default=0, help="random seed (output lengths, text)")
    p.add_argument("--stream-interval", type=int, default=1,
                   help="tokens per streamed chunk (default 1)")
    p.add_argument("--mean-output-tokens", type=int, default=256,
                   help="mean output length when the request does not set ignore_eos")
    p.add_argument("--admission", default="sglang",
                   help="admission rule: sglang (optimistic, retracts when the KV runs out; "
                        "the default) or reserve (a request's whole KV footprint)")
    p.add_argument("--api-key", default=None, help="require this bearer key")
    p.add_argument("--json", action="store_true", help="print the start event as JSON")
    p.add_argument("--list", action="store_true", help="list the profiles and exit")
    p.set_defaults(func=cmd_sim_engine)

    p = add("testnet", "N node processes on loopback, each with an engine, a private "
            "genesis, a workload through the gateways, and a report",
            "wwwserve testnet --nodes 5 --rate 2 --duration 20   # or: --engine URL ...")
    p.add_argument("--nodes", type=int, default=4, help="number of node processes (default 4)")
    p.add_argument("--engine", nargs="+", metavar="URL", default=None,
                   help="engine base URLs (one for all nodes, or one per node); default: a "
                        "`wwwserve sim-engine` process per node")
    p.add_argument("--profile", default=None,
                   help="sim-engine profile for every node (default: the first quarter "
                        "rtx3090, the rest h100 / a100-80g)")
    p.add_argument("--model", default=None,
                   help="model name (default Qwen/Qwen3-8B, or the first --engine's model)")
    p.add_argument("--workload", default="hot",
                   help="hot (the first quarter of the nodes gets 4x the traffic), uniform, "
                        "or burst (--requests at once on node0); default hot")
    p.add_argument("--rate", type=float, default=3.0,
                   help="requests per second over the whole network (default 3)")
    p.add_argument("--duration", type=float, default=30.0,
                   help="seconds of arrivals (default 30)")
    p.add_argument("--requests", type=int, default=0,
                   help="cap on the number of requests (burst: the count; default no cap)")
    p.add_argument("--prompt-tokens", type=int, default=2000, help="prompt length (default 2000)")
    p.add_argument("--max-tokens", type=int, default=128, help="output length (default 128)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="per-request limit in seconds (default 120)")
    p.add_argument("--p-inspect", type=float, default=0.1,
                   help="share of offloaded requests duelled (default 0.1)")
    p.add_argument("--gossip-degree", type=int, default=None,
                   help="GossipSub's D for every node (network.gossip_degree; default 4; "
                        "3 eases many processes on a small machine)")
    p.add_argument("--seed", type=int, default=0, help="workload random seed (default 0)")
    p.add_argument("--out", default=None,
                   help="keep configs, keys, chains, logs and report.json in this new folder "
                        "(default: a temporary folder, removed at the end)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_testnet)

    p = add("status", "show a running node's peers, load, credit, stake, duels and ratings "
            "(via its gateway)",
            "wwwserve status node_configs/node1.yaml   # or: wwwserve status http://127.0.0.1:8001")
    p.add_argument("target", help="the node's config file or its gateway URL")
    p.add_argument("--api-key", default=None, help="the gateway's bearer key, if it has one")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p.set_defaults(func=cmd_status)

    p = add("simulate", "serve a scenario's workload single / centralized / decentralized, "
            "in virtual time", "wwwserve simulate fluctuating --seed 1 --out results/fl")
    p.add_argument("scenario", nargs="?", default=None,
                   help="a shipped scenario name (see --list) or a scenario YAML file")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", default=None,
                   help="output folder (default results/<scenario>-seed<N>)")
    p.add_argument("--strategies", default=None,
                   help="comma-separated subset of single,centralized,oracle,decentralized "
                        "(default: the scenario's own list, else all four)")
    p.add_argument("--list", action="store_true", help="list the shipped scenarios")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_simulate)

    p = add("genesis", "build a private network's genesis from its members' node configs",
            "wwwserve genesis node_configs/*.yaml -o genesis.yaml")
    p.add_argument("configs", nargs="+", help="the members' node YAML files")
    p.add_argument("-o", "--output", default="genesis.yaml",
                   help="where to write it (- for stdout; default genesis.yaml)")
    p.add_argument("--network", default=None, help="network id (default: the configs')")
    p.add_argument("--time", type=float, default=None,
                   help="Unix time of slot 0 (default: now)")
    p.add_argument("--slot-length", type=float, default=2.0, help="seconds per slot")
    p.add_argument("--join-grant", type=float, default=0.0,
                   help="credit a new account may claim once (default 0: none)")
    p.add_argument("--unbonding-blocks", type=int, default=30,
                   help="blocks before unstaked credit is spendable (default 30)")
    p.add_argument("--duel-reward", type=float, default=1.0,
                   help="credit a duel's winner gets from its requester (default 1)")
    p.add_argument("--duel-loser-penalty", type=float, default=1.0,
                   help="share of a duel loser's stake that goes to the winner (default 1.0)")
    p.add_argument("--duel-minority-penalty", type=float, default=0.2,
                   help="share of a minority judge's stake taken (default 0.2)")
    p.add_argument("--duel-silent-penalty", type=float, default=0.05,
                   help="share of a silent judge's stake taken (default 0.05)")
    p.set_defaults(func=cmd_genesis)

    p = add("ledger", "inspect a node's chain on disk: show, verify, balance",
            "wwwserve ledger verify node_configs/node1.yaml")
    p.add_argument("action", choices=["show", "verify", "balance"])
    p.add_argument("config", nargs="?", default=None,
                   help="the node's YAML config or gateway URL (or use --data-dir and "
                        "--genesis)")
    p.add_argument("--api-key", default=None, help="the gateway's bearer key, if it has one")
    p.add_argument("--data-dir", default=None, help="the node's data directory")
    p.add_argument("--genesis", default=None, help="the network's genesis file")
    p.add_argument("--account", default=None, help="balance: only this account")
    p.add_argument("--last", type=int, default=10, help="show: how many blocks (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_ledger)

    p = add("keygen", "create a new Ed25519 key file (mode 0600) and print its peer id",
            "wwwserve keygen keys/my-node.key")
    p.add_argument("path", help="where to write the key (must not exist)")
    p.set_defaults(func=cmd_keygen)

    p = add("id", "print the peer id of a key file or of a node config's key",
            "wwwserve id node_configs/node1.yaml")
    p.add_argument("path", help="a key file, or a node YAML config")
    p.set_defaults(func=cmd_id)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        try:
            code: int = args.func(args)
        except BaseExceptionGroup as group:
            raise _single(group) from None
    except (ConfigError, IdentityError) as exc:
        print(f"wwwserve {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except WWWServeError as exc:
        print(f"wwwserve {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return code


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one wwwserve error (or Ctrl-C) inside nested nursery groups, else the group."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for e in exc.exceptions:
                walk(e)
        else:
            leaves.append(exc)

    walk(group)
    for kind in (KeyboardInterrupt, ConfigError, IdentityError, WWWServeError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return group


if __name__ == "__main__":
    sys.exit(main())
