"""A user who goes away cancels the request, through the gateway (real HTTP on loopback,
an in-memory overlay in real time): a local engine behind HTTP (``sim-engine``'s app) and
a peer's engine across the overlay stop generating within a second."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
import trio

from waiting import wait_until
from wwwserve.config import (
    GatewayParams,
    MembershipParams,
    ModelConfig,
    NetworkParams,
    NodeConfig,
    ServerParams,
)
from wwwserve.engines import Engine, SimEngine, get_profile
from wwwserve.engines.http import HTTPEngine
from wwwserve.http.sim_server import SimEngineServer
from wwwserve.identity import Identity
from wwwserve.market import CreditBook
from wwwserve.node import Node
from wwwserve.overlay import MemoryNetwork

A, B = "Qwen/Qwen3-8B", "Qwen/Qwen3-0.6B"
PARAMS = MembershipParams(heartbeat_interval=0.2, suspect_timeout=1.0, peer_timeout=2.0)


@dataclass
class Net:
    #: the engine behind node a's HTTP driver (model A, served here)
    local: SimEngine
    #: node b's engine (model B, reached by offloading)
    remote: SimEngine
    a: Node
    b: Node
    url: str


@asynccontextmanager
async def two_nodes() -> AsyncIterator[Net]:
    book = CreditBook(shared=True)
    async with MemoryNetwork(seed=5, latency=0.0005) as net, trio.open_nursery() as nursery:
        server = SimEngineServer(SimEngine(get_profile("h100/qwen3-8b"), models=(A,), seed=1))
        url = await nursery.start(server.run)
        remote = SimEngine(get_profile("h100/qwen3-8b"), models=(B,), seed=2)
        nodes: list[Node] = []
        for i, (model, engine) in enumerate(
                ((A, HTTPEngine(url, A, scrape_interval=0.05)), (B, remote))):
            ident = Identity.from_seed(bytes([i + 21]) * 32)
            cfg = NodeConfig(
                server_params=ServerParams(offload_frequency=1.0, queue_frequency=1.0,
                                           accept_frequency=1.0),
                models=(ModelConfig(model_path=model, engine="sim"),),
                network=NetworkParams(network_id="cx", bootstrap=tuple(
                    n.addresses[0] for n in nodes)),
                membership=PARAMS, gateway=GatewayParams(port=0, enabled=i == 0))
            engines: dict[str, Engine] = {model: engine}
            node = Node(cfg, identity=ident, overlay=net.node(ident), engines=engines,
                        credit=book.open(ident.peer_id, 100.0, 10.0), rng=random.Random(i))
            await nursery.start(node.run)
            nodes.append(node)
        await wait_until(lambda: B in nodes[0].dispatcher.network_models(), within=10,
                         what="node a sees model B")
        assert nodes[0].gateway_url
        try:
            yield Net(server.engine, remote, nodes[0], nodes[1], nodes[0].gateway_url)
        finally:
            nursery.cancel_scope.cancel()


def long_chat(model: str, stream: bool) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "tell me everything"}],
            "max_tokens": 3000, "ignore_eos": True, "stream": stream}


async def stops_within_a_second(engine: SimEngine) -> float:
    """Seconds until ``engine`` runs nothing and has counted one abort (fails after 1 s)."""
    return await wait_until(lambda: engine.load().running == 0 and engine.aborted == 1,
                            within=1.0, what="the engine stops generating", every=0.01)


@pytest.mark.parametrize("where", ["local", "remote"])
async def test_a_client_that_closes_its_stream_stops_the_engine(where: str) -> None:
    async with two_nodes() as net:
        engine = net.local if where == "local" else net.remote
        model = A if where == "local" else B
        async with httpx.AsyncClient(base_url=net.url, timeout=30) as client:
            with trio.fail_after(20):
                async with client.stream("POST", "/v1/chat/completions",
                                         json=long_chat(model, True)) as resp:
                    assert resp.status_code == 200
                    seen = 0
                    async for line in resp.aiter_lines():
                        seen += line.startswith("data: ")
                        if seen == 5:
                            break
            assert engine.load().running == 1  # still generating when the client leaves
        await stops_within_a_second(engine)
        assert engine.completed == 0


@pytest.mark.parametrize("where", ["local", "remote"])
async def test_a_client_that_times_out_stops_the_engine(where: str) -> None:
    async with two_nodes() as net:
        engine = net.local if where == "local" else net.remote
        model = A if where == "local" else B
        async with httpx.AsyncClient(base_url=net.url, timeout=1.0) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/v1/chat/completions", json=long_chat(model, False))
        await stops_within_a_second(engine)
        assert engine.completed == 0
