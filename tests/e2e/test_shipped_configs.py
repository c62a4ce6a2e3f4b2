"""The README's four-node network, as shipped: ``node_configs/node1.yaml`` ... ``node4.yaml``
in front of ``wwwserve sim-engine`` processes on the ports they name, a genesis built from
them with ``wwwserve genesis``, and duels (``p_inspect`` raised to 1.0 so every offloaded
request is duelled; everything else as shipped, ``k_judges: 3`` included). A 4-node network
seats one judge per duel: before judges adapted, every duel there was void."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import trio
import yaml

from waiting import models_known, status_of
from wwwserve.testing import ChildProcess

ROOT = Path(__file__).resolve().parents[2]
MODEL = "Qwen/Qwen3-8B"


def prepare(tmp: Path) -> list[Path]:
    """The shipped configs (and node 1's devnet key) copied, with the genesis and
    ``p_inspect: 1.0`` set in each."""
    shutil.copytree(ROOT / "node_configs", tmp, dirs_exist_ok=True)
    configs = sorted(tmp.glob("node*.yaml"))
    assert [c.name for c in configs] == [f"node{k}.yaml" for k in range(1, 5)]
    for cfg in configs:  # each node's key, made as `wwwserve node` would on first start
        data = yaml.safe_load(cfg.read_text())
        key = cfg.parent / data["node"]["key_path"]
        if not key.exists():
            subprocess.run([sys.executable, "-m", "wwwserve", "keygen", str(key)],
                           check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "wwwserve", "genesis", *map(str, configs), "-o",
                    str(tmp / "genesis.yaml")], check=True, capture_output=True)
    for cfg in configs:
        data = yaml.safe_load(cfg.read_text())
        data["network"]["genesis"] = "genesis.yaml"
        data["duel"]["p_inspect"] = 1.0
        cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    return configs


async def test_the_shipped_four_node_configs_settle_duels(tmp_path: Path) -> None:
    configs = prepare(tmp_path)
    procs: list[ChildProcess] = []
    async with trio.open_nursery() as nursery:
        try:
            for port in range(30000, 30004):  # as the README starts them
                procs.append(ChildProcess(["sim-engine", "--port", str(port), "--json"]))
                await procs[-1].start(nursery)
            nodes: list[dict[str, Any]] = []
            for cfg in configs:
                procs.append(ChildProcess(["node", "--json-events", str(cfg)]))
                nodes.append(await procs[-1].start(nursery))
            first = nodes[0]
            await models_known(first["gateway"], {n["peer_id"] for n in nodes[1:]})

            async with openai.AsyncOpenAI(base_url=first["gateway"] + "/v1", api_key="none",
                                          max_retries=0, timeout=120) as users:
                async def one(i: int) -> None:
                    r = await users.completions.create(
                        model=MODEL, prompt=f"{i} " + "z" * 2000, max_tokens=200,
                        extra_body={"ignore_eos": True})
                    assert r.usage is not None and r.usage.completion_tokens == 200

                async with trio.open_nursery() as burst:
                    for i in range(30):
                        burst.start_soon(one, i)

            with trio.fail_after(90):  # duels finish in the background
                while True:
                    status = await status_of(first["gateway"])
                    ledger = status["ledger"]
                    if ledger["duels_settled"] >= 3:
                        break
                    await trio.sleep(0.5)
            duels = status["duels"]
            assert duels.get("decided", 0) + duels.get("tie", 0) >= 3, duels
            assert duels.get("fewer_judges", 0) >= 3, duels  # one judge each: all there is
            votes = 0
            for n in nodes[1:]:
                votes += sum(v for k, v in (await status_of(n["gateway"]))["duels"].items()
                             if k.startswith("voted_"))
            assert votes >= 3
        finally:
            for p in reversed(procs):
                await p.stop()
