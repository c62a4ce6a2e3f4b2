"""Real world: 3 node processes on loopback, each in front of its own sim-engine process.

Node ``a`` runs on a small GPU (RTX 3090 profile) with a low target token usage and gets a
burst of requests through its gateway; ``b`` and ``c`` (H100) serve what it offloads. The
peers' ``/metrics`` show the accepted requests; every user request succeeds.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import openai
import trio
from prometheus_client.parser import text_string_to_metric_families

from wwwserve.testing import ChildProcess

MODEL = "Qwen/Qwen3-8B"


def node_config(tmp: Path, name: str, engine_url: str, bootstrap: list[str], *,
                target: float, accept: float) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        server_params: {{ip: 127.0.0.1, port: 0, offload_frequency: 1.0,
                         queue_frequency: 1.0, accept_frequency: {accept}}}
        ledger_params: {{initial_credit: 1000.0, initial_staked: 10.0}}
        models:
          - model_path: {MODEL}
            base_url: {engine_url}
            scrape_interval: 0.1
            dispatch_params: {{target_token_usage: {target}}}
        node: {{name: {name}, data_dir: data/{name}}}
        network: {{network_id: e2e-offload, bootstrap: {json.dumps(bootstrap)}}}
        gateway: {{port: 0}}
        membership: {{heartbeat_interval: 0.3, suspect_timeout: 1.5, peer_timeout: 3.0}}
        """))
    return path


def dispatch_counts(metrics: str) -> dict[str, float]:
    return {s.labels["decision"]: s.value for f in text_string_to_metric_families(metrics)
            for s in f.samples if s.name == "wwwserve_dispatch_total"}


async def test_overloaded_node_offloads_to_peers_over_libp2p(tmp_path: Path) -> None:
    procs: list[ChildProcess] = []
    clients: list[openai.AsyncOpenAI] = []
    async with trio.open_nursery() as nursery:
        try:
            engines = []
            for profile in ("rtx3090/qwen3-8b", "h100/qwen3-8b", "h100/qwen3-8b"):
                p = ChildProcess(["sim-engine", "--profile", profile, "--model", MODEL,
                                  "--port", "0", "--json"])
                procs.append(p)
                engines.append((await p.start(nursery))["url"])
            nodes = []
            boot: list[str] = []
            for i, name in enumerate("abc"):
                cfg = node_config(tmp_path, name, engines[i], boot,
                                  target=0.05 if i == 0 else 0.9, accept=0.0 if i == 0 else 1.0)
                p = ChildProcess(["node", "--json-events", str(cfg)])
                procs.append(p)
                nodes.append(await p.start(nursery))
                boot = boot or [nodes[0]["addresses"][0]]
            ids = {n["peer_id"] for n in nodes}
            # a knows both peers (and their models) before the burst
            await procs[3].wait_for(lambda p: set(p.events[-1].get("peers", [])) == ids
                                    - {nodes[0]["peer_id"]}, 30)
            client = openai.AsyncOpenAI(base_url=nodes[0]["gateway"] + "/v1", api_key="x",
                                        max_retries=0, timeout=60)
            clients.append(client)
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
            a = dispatch_counts(await client.get(nodes[0]["gateway"] + "/metrics", cast_to=str))
            accepted = 0.0
            for n in nodes[1:]:
                accepted += dispatch_counts(
                    await client.get(n["gateway"] + "/metrics", cast_to=str)).get("accepted", 0)
            assert a.get("offloaded", 0) > 0
            # duelled requests also ran on a second executor (p_inspect defaults to 0.1)
            assert accepted == a["offloaded"] + a.get("duel_copies", 0)
            assert a.get("local", 0) + a["offloaded"] == 24
        finally:
            for c in clients:  # its pooled sockets must not outlive a failed test
                await c.close()
            for p in reversed(procs):
                await p.stop()
            nursery.cancel_scope.cancel()
