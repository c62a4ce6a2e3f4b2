"""One command to join: ``wwwserve node --engine URL --bootstrap <a member's gateway URL>``,
no YAML file and no --model (the engine says what it serves). Two node processes on
loopback, each in front of a sim-engine process: the second learns the first's multiaddr
from the first's gateway, the two see each other, and a user is served through the
second's gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import trio

from waiting import models_known
from wwwserve.testing import ChildProcess

MODEL = "Qwen/Qwen3-8B"


def node_argv(tmp: Path, name: str, engine: str, *extra: str) -> list[str]:
    return ["node", "--json-events", "--engine", engine, "--listen", "/ip4/127.0.0.1/tcp/0",
            "--gateway", "127.0.0.1:0", "--data-dir", str(tmp / name), *extra]


async def test_a_node_joins_with_one_command_and_a_members_gateway_url(tmp_path: Path) -> None:
    procs: list[ChildProcess] = []
    async with trio.open_nursery() as nursery:
        try:
            engines = []
            for seed in range(2):
                procs.append(ChildProcess(["sim-engine", "--port", "0", "--seed", str(seed),
                                           "--json"]))
                engines.append((await procs[-1].start(nursery))["url"])
            procs.append(ChildProcess(node_argv(tmp_path, "a", engines[0])))
            first: dict[str, Any] = await procs[-1].start(nursery)
            procs.append(ChildProcess(node_argv(tmp_path, "b", engines[1],
                                                "--bootstrap", first["gateway"])))
            second: dict[str, Any] = await procs[-1].start(nursery)
            await models_known(first["gateway"], {second["peer_id"]})
            async with openai.AsyncOpenAI(base_url=second["gateway"] + "/v1", api_key="none",
                                          max_retries=0, timeout=60) as users:
                answer = await users.completions.create(model=MODEL, prompt="hi",
                                                        max_tokens=8)
            assert answer.usage is not None and answer.usage.completion_tokens >= 1
        finally:
            for p in reversed(procs):
                await p.stop()
