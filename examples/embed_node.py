"""Embed a wwwserve node in an existing trio service.

Your service already runs under trio: here, a small worker that answers its users' questions
from a queue. It starts a :class:`wwwserve.node.Node` in its own nursery, next to its other
tasks, and sends the questions through ``node.submit`` (streamed) or ``node.complete``: the
node serves each on your engine, or offloads it to a peer when your engine is busy. The same
node also serves an OpenAI-compatible gateway for clients outside the process.

    python examples/embed_node.py                      # simulated engine, no GPU
    python examples/embed_node.py --engine-url http://127.0.0.1:30000 --model Qwen/Qwen3-8B
    python examples/embed_node.py --bootstrap /ip4/127.0.0.1/tcp/5778/p2p/12D3KooW...

It answers ``--questions`` questions and exits.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import trio

from wwwserve.config import (
    GatewayParams,
    ModelConfig,
    NetworkParams,
    NodeConfig,
    NodeParams,
    ServerParams,
)
from wwwserve.engines import ChatMessage, Chunk, CompletionRequest
from wwwserve.errors import WWWServeError
from wwwserve.node import Node


def node_config(args: argparse.Namespace, data_dir: Path) -> NodeConfig:
    """The node's config, built in code (a YAML file via load_config works the same)."""
    if args.engine_url:
        model = ModelConfig(model_path=args.model, base_url=args.engine_url, engine="sglang")
    else:
        model = ModelConfig(model_path=args.model, engine="sim", sim_profile="h100/qwen3-8b")
    return NodeConfig(
        server_params=ServerParams(ip="127.0.0.1", port=0),     # p2p: any free port
        models=(model,),
        node=NodeParams(name="embedded", data_dir=data_dir),     # its key lives here
        network=NetworkParams(network_id=args.network, bootstrap=tuple(args.bootstrap)),
        gateway=GatewayParams(port=0))


async def answer_questions(node: Node, questions: trio.MemoryReceiveChannel[str],
                           model: str) -> int:
    """The service's own worker: each question goes through the node, streamed."""
    answered = 0
    async for question in questions:
        tokens = 0

        async def on_chunk(chunk: Chunk) -> None:
            nonlocal tokens
            tokens += chunk.tokens

        request = CompletionRequest(request_id=f"q{answered}", model=model,
                                    messages=(ChatMessage(role="user", content=question),),
                                    max_tokens=32, stream=True, timeout=60.0)
        try:
            usage = await node.submit(request, on_chunk)
        except WWWServeError as exc:  # every failure is one of these, with a clear message
            print(f"{question!r}: failed: {exc}")
            continue
        answered += 1
        print(f"{question!r}: {usage.completion_tokens} tokens streamed ({tokens} seen)")
    return answered


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        node = Node(node_config(args, Path(tmp)), rng=random.Random())
        async with node, trio.open_nursery() as nursery:
            print(f"node {node.peer_id} on {node.addresses[0]}")
            print(f"OpenAI-compatible gateway at {node.gateway_url}/v1")
            send, receive = trio.open_memory_channel[str](16)
            done = trio.Event()
            answered = 0

            async def worker() -> None:
                nonlocal answered
                answered = await answer_questions(node, receive, args.model)
                done.set()

            nursery.start_soon(worker)
            async with send:
                for i in range(args.questions):
                    await send.send(f"question {i}: what is a decentralized market?")
            await done.wait()
            print(f"answered {answered}/{args.questions}; dispatch {dict(node.dispatcher.stats)}")
            nursery.cancel_scope.cancel()  # the service shuts down; the node leaves cleanly


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine-url", default=None,
                        help="an OpenAI-compatible engine (default: a simulated one)")
    parser.add_argument("--model", default="Qwen/Qwen3-8B", help="the model it serves")
    parser.add_argument("--bootstrap", nargs="*", default=[], help="peers to join through")
    parser.add_argument("--network", default="wwwserve-example", help="network id")
    parser.add_argument("--questions", type=int, default=5, help="how many to answer")
    trio.run(main, parser.parse_args())
