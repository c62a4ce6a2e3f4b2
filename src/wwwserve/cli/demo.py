"""``wwwserve demo``: the README's main job, a local network with simulated engines."""

from __future__ import annotations

import argparse
import random

import trio

from ..config import NodeConfig, NodeParams
from ..errors import ConfigError, WWWServeError
from ..identity import Identity

# ---- demo -------------------------------------------------------------------------------


async def _demo(n_nodes: int, duration: float, burst: int) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from ..config import (
        GatewayParams,
        MembershipParams,
        ModelConfig,
        ModelDispatchParams,
        NetworkParams,
        ServerParams,
    )
    from ..engines import CompletionRequest
    from ..node import Node
    from ..overlay import Libp2pOverlay

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
                      f"{copies}); node0 submitted {st['payments_submitted']} payments")


def cmd_demo(args: argparse.Namespace) -> int:
    if not 2 <= args.nodes <= 30:
        raise ConfigError(f"--nodes: must be between 2 and 30, got {args.nodes}")
    if args.burst < 0:
        raise ConfigError(f"--burst: must be >= 0, got {args.burst}")
    trio.run(_demo, args.nodes, args.duration, args.burst)
    return 0
