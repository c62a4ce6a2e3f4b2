"""A user's node and, offloaded, a peer that serves the model on a given engine: the market
that the OpenAI-fidelity tests and the real-engine tests send the official client into."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import openai
import trio

from recording_engine import MODEL
from waiting import wait_until
from wwwserve.config import (
    GatewayParams,
    GenParams,
    MembershipParams,
    ModelConfig,
    NetworkParams,
    NodeConfig,
    ServerParams,
)
from wwwserve.engines import Engine, SimEngine, get_profile
from wwwserve.identity import Identity
from wwwserve.market import CreditBook
from wwwserve.node import Node
from wwwserve.overlay import MemoryNetwork

OTHER = "Qwen/Qwen3-0.6B"  # what the requester serves itself when MODEL is offloaded
PARAMS = MembershipParams(heartbeat_interval=0.2, suspect_timeout=1.0, peer_timeout=2.0)


@dataclass
class Market:
    client: openai.AsyncOpenAI
    #: the node whose engine ran MODEL's requests
    executor: Node


@asynccontextmanager
async def market(world: str, where: str, engine: Engine,
                 gen_params: GenParams | None = None) -> AsyncIterator[Market]:
    """A user's node and (offloaded) a peer; ``engine`` serves MODEL on the node that runs
    it, with that provider's ``gen_params``."""
    book = CreditBook(shared=True)
    async with MemoryNetwork(seed=4, latency=0.0005) as net, trio.open_nursery() as nursery:
        nodes: list[Node] = []
        for i in range(1 if where == "local" else 2):
            ident = Identity.from_seed(bytes([i + 41]) * 32)
            mine = i == 1 or where == "local"
            model = MODEL if mine else OTHER
            cfg = NodeConfig(
                server_params=ServerParams(offload_frequency=0.0 if where == "local" else 1.0,
                                           queue_frequency=1.0, accept_frequency=1.0),
                models=(ModelConfig(model_path=model, engine="sim",
                                    gen_params=gen_params or GenParams()),),
                network=NetworkParams(network_id="fid", bootstrap=tuple(
                    n.addresses[0] for n in nodes)),
                membership=PARAMS, gateway=GatewayParams(port=0, enabled=i == 0))
            mine_engine = engine if mine else SimEngine(get_profile("a100-80g/qwen3-0.6b"),
                                                        models=(OTHER,), seed=i)
            node = Node(cfg, identity=ident,
                        overlay=net.node(ident) if world == "memory" else None,
                        engines={model: mine_engine},
                        credit=book.open(ident.peer_id, 100.0, 10.0), rng=random.Random(i))
            await nursery.start(node.run)
            nodes.append(node)
        if where == "offloaded":
            await wait_until(lambda: MODEL in nodes[0].dispatcher.network_models(),
                             within=15, what="the user's node sees the peer's model")
        assert nodes[0].gateway_url
        client = openai.AsyncOpenAI(base_url=nodes[0].gateway_url + "/v1", api_key="none",
                                    max_retries=0, timeout=30)
        try:
            yield Market(client, nodes[-1])
        finally:
            await client.close()
            nursery.cancel_scope.cancel()
