"""wwwserve testnet and ProcessTestnet: node and sim-engine processes on loopback."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import trio
import yaml

from wwwserve.testing.report import report
from wwwserve.testing.workload import Workload, run_workload


def processes_under(root: Path) -> list[int]:
    """Pids of processes whose command line mentions ``root`` (the testnet's children)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if str(root).encode() in cmdline and b"wwwserve" in cmdline:
            pids.append(int(entry))
    return pids


def alive(pid: int | None) -> bool:
    return pid is not None and os.path.exists(f"/proc/{pid}")


async def test_a_workload_through_the_gateways_is_served_and_reported(process_testnet,
                                                                      tmp_path) -> None:
    async with process_testnet(3, profiles=["rtx3090/qwen3-8b", "h100/qwen3-8b",
                                            "h100/qwen3-8b"],
                               target_token_usage=[0.0, 0.9, 0.9],
                               accept_frequency=[0.0, 1.0, 1.0]) as net:
        assert net.genesis_path is not None and net.genesis_path.exists()
        results = await run_workload(net, Workload(kind="burst", requests=8, max_tokens=40,
                                                   prompt_tokens=200))
        rep = await report(net, results)
        assert (rep.requests, rep.ok, rep.failed) == (8, 8, 0)
        assert all(r.ttft is not None and r.latency is not None and r.ttft <= r.latency
                   for r in results)
        # node0 never runs its users' requests itself (target 0): all offloaded and paid
        assert rep.nodes[0]["sent"] == 8 and rep.nodes[0]["offloaded"] == 8
        assert rep.offloaded_share == 1.0
        assert sum(row["accepted"] for row in rep.nodes[1:]) >= 8
        assert all(row["peers"] == 2 and row["rss_mb"] > 10 for row in rep.nodes)
        assert rep.slo_attainment["40s"] == 1.0
        pids = [n.process.pid for n in net.nodes] + [n.engine.pid for n in net.nodes
                                                     if n.engine is not None]
    # every child is gone once the block ends
    assert not processes_under(tmp_path)
    assert not any(alive(pid) for pid in pids)


async def test_the_testnet_command_reports_json_and_leaves_nothing_behind(tmp_path) -> None:
    out = tmp_path / "tn"
    proc = await trio.run_process(
        [sys.executable, "-m", "wwwserve", "testnet", "--nodes", "2", "--workload", "uniform",
         "--rate", "2", "--duration", "3", "--max-tokens", "30", "--json", "--quiet",
         "--gossip-degree", "3", "--out", str(out)],
        capture_stdout=True, capture_stderr=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    rep = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert rep["failed"] == 0 and rep["ok"] == rep["requests"] > 0
    assert [row["name"] for row in rep["nodes"]] == ["node0", "node1"]
    assert all(row["rss_mb"] > 10 for row in rep["nodes"])
    assert json.loads((out / "report.json").read_text()) == rep
    assert (out / "genesis.yaml").exists() and (out / "node1" / "node.yaml").exists()
    network = yaml.safe_load((out / "node1" / "node.yaml").read_text())["network"]
    assert network["gossip_degree"] == 3 and network["bootstrap"]  # merged, not replaced
    assert not processes_under(out)


async def test_ctrl_c_stops_every_child(tmp_path) -> None:
    out = tmp_path / "tn"
    seen = bytearray()
    up = trio.Event()

    async def drain(stream: trio.abc.ReceiveStream, keep: bool) -> None:
        # read to the end: a child blocked on a full pipe could not stop
        async for chunk in stream:
            if keep:
                seen.extend(chunk)
                if b"see each other" in seen:
                    up.set()

    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(functools.partial(
            trio.run_process, [sys.executable, "-m", "wwwserve", "testnet", "--nodes", "2",
                               "--duration", "120", "--out", str(out)],
            stdout=-1, stderr=-1, check=False))
        assert proc.stderr is not None and proc.stdout is not None
        nursery.start_soon(drain, proc.stderr, True)
        nursery.start_soon(drain, proc.stdout, False)
        with trio.fail_after(60):
            await up.wait()
        assert processes_under(out)  # nodes and engines are running
        proc.send_signal(signal.SIGINT)  # to the testnet command only, as a terminal's ^C
        with trio.move_on_after(40):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            pytest.fail("the testnet command did not stop within 40 s of Ctrl-C; it said:\n"
                        + seen[-3000:].decode(errors="replace"))
        nursery.cancel_scope.cancel()  # (a child left holding a pipe must not hang this)
    assert proc.returncode == 0
    assert not processes_under(out)


async def test_an_engine_url_that_does_not_answer_is_a_clear_error(tmp_path) -> None:
    proc = await trio.run_process(
        [sys.executable, "-m", "wwwserve", "testnet", "--nodes", "1", "--engine",
         "http://127.0.0.1:9"], capture_stdout=True, capture_stderr=True, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 2
    assert "--engine http://127.0.0.1:9: cannot read its model list" in err
    assert "Traceback" not in err
