"""Every script in examples/ runs as documented (each as its own process)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import trio

EXAMPLES = Path(__file__).parent.parent.parent / "examples"


async def run_example(name: str, *args: str) -> str:
    proc = await trio.run_process([sys.executable, str(EXAMPLES / name), *args],
                                  capture_stdout=True, capture_stderr=True, check=False)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    return out


def test_every_example_has_a_test() -> None:
    tested = {"custom_policy.py", "embed_node.py", "three_nodes.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


async def test_custom_policy_keeps_headroom_that_the_default_gives_away() -> None:
    out = await run_example("custom_policy.py")
    got = {m[0]: (int(m[1]), int(m[2])) for m in re.findall(
        r"(default policy|HeadroomPolicy) peer: accepted (\d+), peak KV (\d+)%", out)}
    (d_acc, d_peak), (h_acc, h_peak) = got["default policy"], got["HeadroomPolicy"]
    assert 0 < h_acc < d_acc
    assert h_peak < d_peak


async def test_embedded_node_answers_its_service_questions() -> None:
    out = await run_example("embed_node.py", "--questions", "3")
    assert re.search(r"OpenAI-compatible gateway at http://127\.0\.0\.1:\d+/v1", out)
    assert "answered 3/3" in out
    assert out.count("tokens streamed") == 3


async def test_three_node_script_offloads_and_pays() -> None:
    out = await run_example("three_nodes.py", "--burst", "10")
    m = re.search(r"(\d+)/10 requests served: (\d+) by node0's engine, (\d+) offloaded", out)
    assert m is not None, out
    served, local, offloaded = map(int, m.groups())
    assert served == 10 and local + offloaded == 10 and offloaded > 0
    accepted = sum(int(a) for a in re.findall(r"node[12]: accepted (\d+)", out))
    assert accepted >= offloaded
