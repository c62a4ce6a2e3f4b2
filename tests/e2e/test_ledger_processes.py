"""Real world: 5 node processes on loopback share one ledger.

Node ``n0`` (a small simulated GPU with a low target) offloads a burst to its peers and
pays them on the chain. All five agree on the chain and its state root. Then ``n4`` is
SIGKILLed, more requests are paid for while it is gone, and it is restarted with the same
key and data directory: it reloads its chain from disk and catches up with the others.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import openai
import trio
from prometheus_client.parser import text_string_to_metric_families

from waiting import models_known
from wwwserve.identity import load_or_create_identity
from wwwserve.ledger import UNIT, Allocation, Genesis
from wwwserve.testing import ChildProcess

MODEL = "Qwen/Qwen3-8B"
N = 5


def write_configs(tmp: Path) -> list[Path]:
    ids = [load_or_create_identity(tmp / f"n{k}.key") for k in range(N)]
    genesis = Genesis(network="e2e-ledger", time=float(int(__import__("time").time())),
                      slot_length=1.0, allocations=tuple(
                          Allocation(i.peer_id, 990 * UNIT, 10 * UNIT) for i in ids))
    (tmp / "genesis.yaml").write_text(genesis.to_yaml())
    paths = []
    for k in range(N):
        profile = "rtx3090/qwen3-8b" if k == 0 else "h100/qwen3-8b"
        target = 0.02 if k == 0 else 0.9
        accept = 0.0 if k == 0 else 1.0
        path = tmp / f"n{k}.yaml"
        path.write_text(textwrap.dedent(f"""\
            server_params: {{ip: 127.0.0.1, port: 0, offload_frequency: 1.0,
                             queue_frequency: 1.0, accept_frequency: {accept}}}
            models:
              - model_path: {MODEL}
                engine: sim
                sim_profile: {profile}
                dispatch_params: {{target_token_usage: {target}}}
            node: {{name: n{k}, data_dir: data/n{k}, key_path: n{k}.key}}
            network: {{network_id: e2e-ledger, genesis: genesis.yaml, bootstrap: BOOT}}
            gateway: {{port: 0}}
            membership: {{heartbeat_interval: 0.3, suspect_timeout: 1.5, peer_timeout: 3.0}}
            """))
        paths.append(path)
    return paths


def with_bootstrap(path: Path, boot: list[str]) -> Path:
    text = path.read_text()
    out = path.with_suffix(".run.yaml")
    out.write_text(text.replace("BOOT", json.dumps(boot)))
    return out


async def status(client: openai.AsyncOpenAI, node: dict[str, Any]) -> dict[str, Any]:
    got = await client.get(node["gateway"] + "/status", cast_to=object)
    assert isinstance(got, dict)
    return got


async def burst(client: openai.AsyncOpenAI, n: int) -> None:
    async def one() -> None:
        r = await client.completions.create(model=MODEL, prompt="z" * 2000, max_tokens=100,
                                            extra_body={"ignore_eos": True})
        assert r.usage is not None and r.usage.completion_tokens == 100

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
            await trio.sleep(0.05)


async def agree(client: openai.AsyncOpenAI, nodes: list[dict[str, Any]], within: float
                ) -> list[dict[str, Any]]:
    """Wait until every node has the same tip and state root; return their ledgers."""
    with trio.fail_after(within):
        while True:
            ledgers = [(await status(client, n))["ledger"] for n in nodes]
            # tips move every slot (1 s): poll until one reading finds them all alike
            if len({(lg["tip"], lg["state_root"]) for lg in ledgers}) == 1:
                return ledgers
            await trio.sleep(0.5)


async def test_five_processes_agree_and_a_killed_node_resumes_from_disk(tmp_path: Path) -> None:
    configs = write_configs(tmp_path)
    procs: dict[int, ChildProcess] = {}
    client = openai.AsyncOpenAI(base_url="http://127.0.0.1:1/v1", api_key="x", max_retries=0,
                                timeout=60)
    users: openai.AsyncOpenAI | None = None
    async with trio.open_nursery() as nursery:
        try:
            nodes: list[dict[str, Any]] = []
            boot: list[str] = []
            run_configs = []
            for k in range(N):
                cfg = with_bootstrap(configs[k], boot)
                run_configs.append(cfg)
                procs[k] = ChildProcess(["node", "--json-events", str(cfg)])
                nodes.append(await procs[k].start(nursery))
                boot = boot or [nodes[0]["addresses"][0]]
            ids = {n["peer_id"] for n in nodes}
            await procs[0].wait_for(
                lambda p: set(p.events[-1].get("peers", [])) == ids - {nodes[0]["peer_id"]}, 30)
            await models_known(nodes[0]["gateway"], ids - {nodes[0]["peer_id"]})

            users = openai.AsyncOpenAI(base_url=nodes[0]["gateway"] + "/v1", api_key="x",
                                       max_retries=0, timeout=60)
            await burst(users, 16)
            before = await status(client, nodes[0])
            assert before["dispatch"].get("payments_submitted", 0) > 0
            ledgers = await agree(client, nodes, 40)
            assert ledgers[0]["height"] > 3
            metrics = await client.get(nodes[1]["gateway"] + "/metrics", cast_to=str)
            values = {s.name: s.value for f in text_string_to_metric_families(metrics)
                      for s in f.samples}
            assert values["wwwserve_ledger_height"] >= ledgers[0]["height"]
            # the ledger tools read a running node through its gateway
            done = await trio.run_process(
                [sys.executable, "-m", "wwwserve", "ledger", "balance", nodes[2]["gateway"],
                 "--json"], capture_stdout=True)
            rows = json.loads(done.stdout)
            assert len(rows) == N
            total = sum(r["balance"] + r["stake"] + r["unbonding"] for r in rows)
            assert abs(total - N * 1000) < 1e-6

            # SIGKILL n4; more paid work while it is away; restart it from its disk
            procs[4].kill()
            await procs[4].stop()
            height_at_kill = ledgers[4]["height"]
            await burst(users, 12)
            procs[4] = ChildProcess(["node", "--json-events", str(run_configs[4])])
            nodes[4] = await procs[4].start(nursery)
            back = await status(client, nodes[4])
            assert back["ledger"]["stats"]["blocks_loaded"] >= height_at_kill
            ledgers = await agree(client, nodes, 60)
            assert ledgers[4]["height"] > height_at_kill
            paid = (await status(client, nodes[0]))["dispatch"]["payments_submitted"]
            assert paid > before["dispatch"]["payments_submitted"]
        finally:
            await client.close()
            if users is not None:
                await users.close()
            for p in reversed(list(procs.values())):
                await p.stop()
            nursery.cancel_scope.cancel()
