"""Real world: 3 node processes on loopback, each in front of its own sim-engine process.

Node ``a`` runs on a small GPU (RTX 3090 profile) with a low target token usage and gets a
burst of requests through its gateway; ``b`` and ``c`` (H100) serve what it offloads. The
peers' ``/metrics`` show the accepted requests; every user request succeeds.
"""

from __future__ import annotations

import openai
import trio
from prometheus_client.parser import text_string_to_metric_families

MODEL = "Qwen/Qwen3-8B"


def dispatch_counts(metrics: str) -> dict[str, float]:
    return {s.labels["decision"]: s.value for f in text_string_to_metric_families(metrics)
            for s in f.samples if s.name == "wwwserve_dispatch_total"}


async def test_overloaded_node_offloads_to_peers_over_libp2p(process_testnet) -> None:
    async with process_testnet(
            3, profiles=["rtx3090/qwen3-8b", "h100/qwen3-8b", "h100/qwen3-8b"], ledger=False,
            target_token_usage=[0.05, 0.9, 0.9], accept_frequency=[0.0, 1.0, 1.0],
            heartbeat_interval=0.3) as net:
        # entering waited until every node knows both peers (and their models)
        gateway = net.nodes[0].gateway
        async with openai.AsyncOpenAI(base_url=gateway + "/v1", api_key="x", max_retries=0,
                                      timeout=60) as client:
            results: list[int] = []

            async def one(i: int) -> None:
                r = await client.completions.create(
                    model=MODEL, prompt="z" * 2000, max_tokens=150,
                    extra_body={"ignore_eos": True})
                assert r.usage is not None
                results.append(r.usage.completion_tokens)

            async with trio.open_nursery() as burst:
                for i in range(24):
                    burst.start_soon(one, i)
                    await trio.sleep(0.05)
        assert results == [150] * 24
        a = dispatch_counts(await net.metrics(0))
        accepted = 0.0
        for k in (1, 2):
            accepted += dispatch_counts(await net.metrics(k)).get("accepted", 0)
        assert a.get("offloaded", 0) > 0
        # duelled requests also ran on a second executor (p_inspect defaults to 0.1)
        assert accepted == a["offloaded"] + a.get("duel_copies", 0)
        assert a.get("local", 0) + a["offloaded"] == 24
