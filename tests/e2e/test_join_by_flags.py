"""One command to join, no YAML file and no --model (the engine says what it serves): two
node processes on loopback, each in front of a sim-engine process. The first runs from
flags; the newcomer from ``WWWSERVE_*`` variables alone, with the first's *gateway URL* as
its bootstrap (it fetches the multiaddr from the member's ``/status``). The first's users
ask for the model only the newcomer serves: it is offloaded to the newcomer and served."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import trio

from waiting import models_known, status_of
from wwwserve.testing import ChildProcess

MODEL = "Qwen/Qwen3-8B"


async def test_a_newcomer_joins_with_variables_alone_and_serves_an_offloaded_request(
        tmp_path: Path) -> None:
    procs: list[ChildProcess] = []
    async with trio.open_nursery() as nursery:
        try:
            engines = []
            for model in ("other/model", MODEL):
                procs.append(ChildProcess(["sim-engine", "--port", "0", "--model", model,
                                           "--json"]))
                engines.append((await procs[-1].start(nursery))["url"])
            procs.append(ChildProcess([
                "node", "--json-events", "--engine", engines[0], "--listen",
                "/ip4/127.0.0.1/tcp/0", "--gateway", "127.0.0.1:0", "--data-dir",
                str(tmp_path / "member")]))
            member: dict[str, Any] = await procs[-1].start(nursery)
            procs.append(ChildProcess(["node", "--json-events"], prefix=[
                "env", f"WWWSERVE_ENGINE={engines[1]}",
                f"WWWSERVE_BOOTSTRAP={member['gateway']}",
                "WWWSERVE_LISTEN=/ip4/127.0.0.1/tcp/0", "WWWSERVE_GATEWAY=127.0.0.1:0",
                f"WWWSERVE_DATA_DIR={tmp_path / 'newcomer'}"]))
            newcomer: dict[str, Any] = await procs[-1].start(nursery)
            await models_known(member["gateway"], {newcomer["peer_id"]})
            async with openai.AsyncOpenAI(base_url=member["gateway"] + "/v1", api_key="none",
                                          max_retries=0, timeout=60) as users:
                answer = await users.completions.create(model=MODEL, prompt="hi",
                                                        max_tokens=8)
            assert answer.usage is not None and answer.usage.completion_tokens >= 1
            assert (await status_of(newcomer["gateway"]))["dispatch"]["accepted"] == 1
        finally:
            for p in reversed(procs):
                await p.stop()
