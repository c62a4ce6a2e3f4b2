"""Three node processes on loopback: discovery, SIGKILL detection, restart with the same key."""

from __future__ import annotations

import functools
import json
import signal
import sys
import textwrap
from pathlib import Path

import trio

from waiting import wait_until

PEER_TIMEOUT = 3.0


def write_config(dirpath: Path, name: str, bootstrap: list[str]) -> Path:
    path = dirpath / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        server_params: {{ip: 127.0.0.1, port: 0}}
        models: []
        node: {{name: {name}, data_dir: data/{name}}}
        gateway: {{port: 0}}
        network:
          network_id: e2e
          bootstrap: {json.dumps(bootstrap)}
        membership: {{heartbeat_interval: 0.5, suspect_timeout: 1.5, peer_timeout: {PEER_TIMEOUT}}}
        """))
    return path


class NodeProcess:
    def __init__(self, config: Path) -> None:
        self.config = config
        self.peers: set[str] = set()
        self.events: list[tuple[float, str, str]] = []
        self.started = trio.Event()
        self.changed = trio.Event()
        self.peer_id = ""
        self.addresses: list[str] = []

    async def run(self, nursery: trio.Nursery) -> None:
        self.proc = await nursery.start(functools.partial(
            trio.run_process,
            [sys.executable, "-m", "wwwserve", "node", "--json-events", str(self.config)],
            stdout=-1, check=False))
        nursery.start_soon(self._read)
        with trio.fail_after(30):
            await self.started.wait()

    async def _read(self) -> None:
        buf = b""
        async for chunk in self.proc.stdout:
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                ev = json.loads(line)
                if ev["event"] == "started":
                    self.peer_id, self.addresses = ev["peer_id"], ev["addresses"]
                    self.started.set()
                    continue
                self.peers = set(ev["peers"])
                self.events.append((trio.current_time(), ev["event"], ev["peer_id"]))
                self.changed.set()
                self.changed = trio.Event()


async def test_three_processes_kill_and_restart(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        a = NodeProcess(write_config(tmp_path, "a", []))
        await a.run(nursery)
        b = NodeProcess(write_config(tmp_path, "b", [a.addresses[0]]))
        c_config = write_config(tmp_path, "c", [a.addresses[0]])
        c = NodeProcess(c_config)
        await b.run(nursery)
        await c.run(nursery)
        try:
            await wait_until(lambda: a.peers == {b.peer_id, c.peer_id}
                             and b.peers == {a.peer_id, c.peer_id}
                             and c.peers == {a.peer_id, b.peer_id}, within=30,
                             what="three processes see each other")
            # SIGKILL c: a and b drop it within peer_timeout + 1 s
            c.proc.send_signal(signal.SIGKILL)
            killed_at = trio.current_time()
            await wait_until(lambda: c.peer_id not in a.peers and c.peer_id not in b.peers,
                             within=PEER_TIMEOUT + 5, what="the killed node is dropped")
            for n in (a, b):
                left = [t for t, kind, pid in n.events if kind == "left" and pid == c.peer_id]
                assert left and left[-1] - killed_at <= PEER_TIMEOUT + 1.0
            # restart with the same config (same key file): same peer id, re-admitted
            c2 = NodeProcess(c_config)
            await c2.run(nursery)
            assert c2.peer_id == c.peer_id
            await wait_until(lambda: c.peer_id in a.peers and c.peer_id in b.peers, within=30,
                             what="the restarted node is back")
            assert (tmp_path / "data" / "c" / "node.key").exists()
            # the event stream holds changes of the table, not every peer's heartbeat
            for n in (a, b):
                kinds = {kind for _, kind, _ in n.events}
                assert "joined" in kinds and "left" in kinds
                assert kinds <= {"joined", "suspected", "recovered", "rejoined", "left"}, kinds
        finally:
            for n in (a, b, c, locals().get("c2")):
                if n is not None and n.proc.returncode is None:
                    n.proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                for n in (a, b, locals().get("c2")):
                    if n is not None:
                        await n.proc.wait()
            nursery.cancel_scope.cancel()
