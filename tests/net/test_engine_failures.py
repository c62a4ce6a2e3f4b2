"""Engine failures as a user meets them, through a node's gateway (real HTTP on loopback,
an in-memory overlay in real time): a failing engine is retried a handful of times with
backoff, never in a storm, and the user gets the engine's verdict."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import trio

from recording_engine import Recording, recording_engine
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
from wwwserve.identity import Identity
from wwwserve.market import CreditBook
from wwwserve.node import Node
from wwwserve.overlay import MemoryNetwork

MODEL = "Qwen/Qwen3-8B"
PARAMS = MembershipParams(heartbeat_interval=0.2, suspect_timeout=1.0, peer_timeout=2.0)
#: the most times one request may reach a failing engine
MAX_CALLS = 5


@asynccontextmanager
async def node_before(rec: Recording, *, peer: bool = False) -> AsyncIterator[httpx.AsyncClient]:
    """A node whose only local engine is ``rec``, with its gateway; with ``peer``, a second
    node serving the same model on a healthy simulated engine."""
    book = CreditBook(shared=True)
    async with MemoryNetwork(seed=3, latency=0.0005) as net, trio.open_nursery() as nursery:
        nodes: list[Node] = []
        for i in range(2 if peer else 1):
            ident = Identity.from_seed(bytes([i + 9]) * 32)
            engine: Engine = HTTPEngine(rec.url, MODEL, scrape_interval=0.05) if i == 0 \
                else SimEngine(get_profile("h100/qwen3-8b"), models=(MODEL,), seed=i)
            cfg = NodeConfig(
                server_params=ServerParams(offload_frequency=0.0, queue_frequency=1.0,
                                           accept_frequency=1.0),
                models=(ModelConfig(model_path=MODEL, engine="sim"),),
                network=NetworkParams(network_id="ef", bootstrap=tuple(
                    n.addresses[0] for n in nodes)),
                membership=PARAMS, gateway=GatewayParams(port=0, enabled=i == 0))
            node = Node(cfg, identity=ident, overlay=net.node(ident), engines={MODEL: engine},
                        credit=book.open(ident.peer_id, 100.0, 10.0), rng=random.Random(i))
            await nursery.start(node.run)
            nodes.append(node)
        if peer:
            await wait_until(lambda: len(nodes[0].membership.peers) == 1, within=10,
                             what="the nodes see each other")
        async with httpx.AsyncClient(base_url=nodes[0].gateway_url, timeout=30) as client:
            yield client
        nursery.cancel_scope.cancel()


def chat(stream: bool = False, content: str = "hello") -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}],
            "max_tokens": 4, "stream": stream, "timeout": 20}


@pytest.mark.parametrize("stream", [False, True])
async def test_an_engine_answering_429_is_called_a_handful_of_times_and_its_429_reaches_the_user(
        stream: bool) -> None:
    async with recording_engine(status=429, reply_headers=[("retry-after", "1")],
                                message="too many requests, slow down") as rec, \
            node_before(rec) as client:
        with trio.fail_after(15):
            resp = await client.post("/v1/chat/completions", json=chat(stream))
        assert resp.status_code == 429, resp.text
        assert resp.headers["retry-after"] == "1"
        assert "slow down" in resp.json()["error"]["message"]
        assert 1 <= rec.calls <= MAX_CALLS


async def test_an_engine_answering_500_gives_a_502_with_its_reason_after_a_few_calls() -> None:
    async with recording_engine(status=500, message="CUDA out of memory") as rec, \
            node_before(rec) as client:
        with trio.fail_after(15):
            resp = await client.post("/v1/chat/completions", json=chat())
        assert resp.status_code == 502, resp.text
        assert "CUDA out of memory" in resp.json()["error"]["message"]
        assert "Error" not in resp.json()["error"]["message"].split(":")[0]
        assert 1 <= rec.calls <= MAX_CALLS


async def test_text_no_engine_can_be_sent_is_a_400_at_once() -> None:
    async with recording_engine() as rec, node_before(rec) as client:
        raw = b'{"model": "%s", "messages": [{"role": "user", "content": "\\ud800"}]}' \
            % MODEL.encode()
        with trio.fail_after(5):
            resp = await client.post("/v1/chat/completions", content=raw,
                                     headers={"content-type": "application/json"})
        assert resp.status_code == 400
        assert "messages[0].content" in resp.json()["error"]["message"]
        assert rec.calls == 0


async def test_a_failing_local_engine_fails_over_to_a_healthy_peer() -> None:
    async with recording_engine(status=500) as rec, node_before(rec, peer=True) as client:
        with trio.fail_after(15):
            resp = await client.post("/v1/chat/completions", json=chat())
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"]
        assert 1 <= rec.calls <= MAX_CALLS
