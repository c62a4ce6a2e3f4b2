"""Real world: duels between node processes, each in front of its own sim-engine process.

Five nodes on loopback share a private genesis; ``n0`` (a small GPU with a low target) sends
a burst it must offload, and duels every offloaded request (``p_inspect: 1.0``). The second
answers are judged by the two other nodes with their own engines (over HTTP, through the
judge prompt), votes are committed and revealed over libp2p, settlements land on the ledger,
and every node ends with the same balances.
"""

from __future__ import annotations

import json
import textwrap
import time
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


def write_configs(tmp: Path, engines: list[str]) -> list[Path]:
    ids = [load_or_create_identity(tmp / f"n{k}.key") for k in range(N)]
    genesis = Genesis(network="e2e-duel", time=float(int(time.time())), slot_length=1.0,
                      allocations=tuple(Allocation(i.peer_id, 900 * UNIT, 100 * UNIT)
                                        for i in ids))
    (tmp / "genesis.yaml").write_text(genesis.to_yaml())
    paths = []
    for k in range(N):
        path = tmp / f"n{k}.yaml"
        path.write_text(textwrap.dedent(f"""\
            server_params: {{ip: 127.0.0.1, port: 0, offload_frequency: 1.0,
                             queue_frequency: 1.0, accept_frequency: {0.0 if k == 0 else 1.0}}}
            models:
              - model_path: {MODEL}
                base_url: {engines[k]}
                scrape_interval: 0.1
                dispatch_params: {{target_token_usage: {0.01 if k == 0 else 0.9}}}
            node: {{name: n{k}, data_dir: data/n{k}, key_path: n{k}.key}}
            network: {{network_id: e2e-duel, genesis: genesis.yaml, bootstrap: BOOT}}
            gateway: {{port: 0}}
            membership: {{heartbeat_interval: 0.3, suspect_timeout: 1.5, peer_timeout: 3.0}}
            duel: {{p_inspect: 1.0, k_judges: 2, judge_timeout: 20.0, reveal_timeout: 10.0}}
            """))
        paths.append(path)
    return paths


async def test_duels_are_judged_settled_and_agreed_on_by_every_node(tmp_path: Path) -> None:
    procs: list[ChildProcess] = []
    client = openai.AsyncOpenAI(base_url="http://127.0.0.1:1/v1", api_key="x", max_retries=0,
                                timeout=60)
    users: openai.AsyncOpenAI | None = None

    async def status(node: dict[str, Any]) -> dict[str, Any]:
        got = await client.get(node["gateway"] + "/status", cast_to=object)
        assert isinstance(got, dict)
        return got

    async with trio.open_nursery() as nursery:
        try:
            engines = []
            for k in range(N):
                profile = "rtx3090/qwen3-8b" if k == 0 else "a100-80g/qwen3-8b"
                p = ChildProcess(["sim-engine", "--profile", profile, "--model", MODEL,
                                  "--port", "0", "--json"])
                procs.append(p)
                engines.append((await p.start(nursery))["url"])
            configs = write_configs(tmp_path, engines)
            nodes: list[dict[str, Any]] = []
            boot: list[str] = []
            for cfg in configs:
                run = cfg.with_suffix(".run.yaml")
                run.write_text(cfg.read_text().replace("BOOT", json.dumps(boot)))
                p = ChildProcess(["node", "--json-events", str(run)])
                procs.append(p)
                nodes.append(await p.start(nursery))
                boot = boot or [nodes[0]["addresses"][0]]
            ids = {n["peer_id"] for n in nodes}
            await procs[N].wait_for(
                lambda p: set(p.events[-1].get("peers", [])) == ids - {nodes[0]["peer_id"]}, 30)
            await models_known(nodes[0]["gateway"], ids - {nodes[0]["peer_id"]})

            users = openai.AsyncOpenAI(base_url=nodes[0]["gateway"] + "/v1", api_key="x",
                                       max_retries=0, timeout=60)

            async def one() -> None:
                assert users is not None
                r = await users.completions.create(
                    model=MODEL, prompt="z" * 2000, max_tokens=60,
                    extra_body={"ignore_eos": True})
                assert r.usage is not None and r.usage.completion_tokens == 60

            async with trio.open_nursery() as burst:
                for _ in range(16):
                    burst.start_soon(one)
                    await trio.sleep(0.05)

            # duels finish in the background: wait until n0 has settled some and every
            # replica has the same tip and state with those settlements in it
            with trio.fail_after(90):
                while True:
                    s0 = await status(nodes[0])
                    views = [(await status(n))["ledger"] for n in nodes]
                    if s0["duels"].get("settled", 0) >= 3 and len(
                            {(v["tip"], v["state_root"]) for v in views}) == 1 \
                            and views[0]["duels_settled"] >= s0["duels"]["settled"] \
                            and views[0]["pending"] == 0:
                        break
                    await trio.sleep(0.5)
            duels = s0["duels"]
            assert duels.get("decided", 0) + duels.get("tie", 0) >= 3
            assert s0["dispatch"].get("duel_copies", 0) >= 3
            votes = 0
            for n in nodes[1:]:
                st = await status(n)
                votes += sum(v for k, v in st["duels"].items() if k.startswith("voted_"))
            # two judges per judged duel (a duel with a missing answer has none; under load
            # a judge may miss its deadline: silent)
            judged = duels["settled"] - duels.get("missing_answer", 0)
            assert judged >= 1 and 2 <= votes <= 2 * judged
            # the same balances and ratings everywhere, credit conserved. Blocks keep coming
            # (stake re-targeting): read every replica at one height, retrying until they
            # are all read at the same one
            with trio.fail_after(30):
                while True:
                    views = []
                    for n in nodes:
                        got = await client.get(n["gateway"] + "/ledger", cast_to=object)
                        assert isinstance(got, dict)
                        views.append(got)
                    ratings = [(await status(n))["ratings"] for n in nodes]
                    if len({v["tip"] for v in views}) == 1 and all(
                            r == ratings[0] for r in ratings):
                        break
                    await trio.sleep(0.3)
            assert all(v["accounts"] == views[0]["accounts"] for v in views)
            total = sum(r["balance"] + r["stake"] + r["unbonding"] for r in views[0]["accounts"])
            assert abs(total - N * 1000) < 1e-6
            assert ratings[0]
            metrics = await client.get(nodes[3]["gateway"] + "/metrics", cast_to=str)
            samples = [s for f in text_string_to_metric_families(metrics) for s in f.samples]
            rated = {s.labels["peer"]: s.value for s in samples
                     if s.name == "wwwserve_peer_rating"}
            assert rated == {p: r["rating"] for p, r in ratings[0].items()}
            # duel events as counted where the duels were requested (node 3 may never have
            # been drawn as a judge, and then has none)
            metrics = await client.get(nodes[0]["gateway"] + "/metrics", cast_to=str)
            samples = [s for f in text_string_to_metric_families(metrics) for s in f.samples]
            assert any(s.name == "wwwserve_duel_events_total" for s in samples)
        finally:
            await client.close()
            if users is not None:
                await users.close()
            for p in reversed(procs):
                await p.stop()
            nursery.cancel_scope.cancel()
