"""A 3-node wwwserve network in one script: libp2p on loopback, simulated engines.

node0 runs on a small GPU whose users send a burst; node1 and node2 (H100s) join through
node0's address. node0 offloads what its engine cannot take, picking executors by stake;
the script prints who served what and the credits that moved.

    python examples/three_nodes.py [--burst 12]

Each node here is built in code; ``wwwserve node node_configs/node1.yaml`` runs the same
thing from a config file, one process per node.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import trio

from wwwserve.config import (
    GatewayParams,
    MembershipParams,
    ModelConfig,
    ModelDispatchParams,
    NetworkParams,
    NodeConfig,
    NodeParams,
    ServerParams,
)
from wwwserve.engines import CompletionRequest
from wwwserve.node import Node

MODEL = "Qwen/Qwen3-8B"


def config(i: int, data: Path, bootstrap: tuple[str, ...]) -> NodeConfig:
    small = i == 0
    return NodeConfig(
        server_params=ServerParams(ip="127.0.0.1", port=0, offload_frequency=1.0,
                                   accept_frequency=0.0 if small else 1.0),
        models=(ModelConfig(model_path=MODEL, engine="sim",
                            sim_profile="rtx3090/qwen3-8b" if small else "h100/qwen3-8b",
                            dispatch_params=ModelDispatchParams(
                                target_token_usage=0.05 if small else 0.9)),),
        node=NodeParams(name=f"node{i}", data_dir=data / f"node{i}"),
        network=NetworkParams(network_id="three-nodes", bootstrap=bootstrap),
        membership=MembershipParams(heartbeat_interval=0.3, suspect_timeout=1.5,
                                    peer_timeout=3.0),
        gateway=GatewayParams(enabled=False))


async def main(burst: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            nodes = [Node(config(0, Path(tmp), ()), rng=random.Random(0))]
            await nursery.start(nodes[0].run)
            boot = (nodes[0].addresses[0],)
            print(f"node0 {nodes[0].peer_id} listening on {boot[0]}")
            for i in (1, 2):
                nodes.append(Node(config(i, Path(tmp), boot), rng=random.Random(i)))
                await nursery.start(nodes[i].run)
                print(f"node{i} {nodes[i].peer_id} joined through node0")
            with trio.fail_after(30):  # wait until node0 knows both peers and their stakes
                while len(nodes[0].peers) < 2 or not all(  # noqa: ASYNC110
                        p.stake > 0 for p in nodes[0].peers.values()):
                    await trio.sleep(0.1)

            served: list[int] = []

            async def ask(k: int) -> None:
                _, usage = await nodes[0].complete(CompletionRequest(
                    request_id=f"r{k}", model=MODEL, prompt="hello " * 300, max_tokens=64,
                    ignore_eos=True, timeout=60.0))
                served.append(usage.completion_tokens)

            async with trio.open_nursery() as users:
                for k in range(burst):
                    users.start_soon(ask, k)
            st = nodes[0].dispatcher.stats
            print(f"{len(served)}/{burst} requests served: {st['local']} by node0's engine, "
                  f"{st['offloaded']} offloaded")
            for i, node in enumerate(nodes):
                print(f"  node{i}: accepted {node.dispatcher.stats['accepted']}, credit "
                      f"{node.credit.balance():.0f}, stake {node.credit.stake():.0f}")
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=12, help="requests node0's users send")
    trio.run(main, parser.parse_args().burst)
