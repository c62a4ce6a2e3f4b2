"""Overlay benchmark: libp2p round trips vs plain TCP, GossipSub spread, membership timing, RSS.

Prints its figures and ends with one JSON line. Ratios are against a plain trio TCP echo
measured in the same run (these machines are noisy). Targets (issue 2): 1 KB round trip p50
<= 1.5 ms; a joiner seen by all 20 within 3 s; a killed node dropped by all within
peer_timeout + 1 s; <= 5 MiB RSS per additional in-process node.

Membership is timed twice: with every node in its own process (10 and 20 processes, as
deployed; a SIGKILL for the kill) and with 20 nodes in this one process. Each copy of a
gossip message a node receives or forwards costs py-libp2p 0.8.1 roughly 1 ms of CPU
(decrypt, demultiplex, parse, validate, encrypt), a node gets about one copy per mesh
peer, and every node sends a heartbeat a second: an idle node's CPU grows with the
network's size, and the figures at N = 20 show where this 2-core machine runs out.

    python bench/overlay.py [--quick]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path

import trio

from wwwserve.config import GatewayParams, MembershipParams, NetworkParams, NodeConfig
from wwwserve.identity import Identity
from wwwserve.node import Node
from wwwserve.overlay import Libp2pOverlay, ResponseSender
from wwwserve.testing.processes import ChildProcess, TestnetError

ECHO = "/bench/echo/1.0.0"
#: join-then-kill rounds timed in each multi-process network
TRIALS = 3


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def echo(peer: str, request: bytes, sender: ResponseSender) -> None:
    await sender.send(request)


async def libp2p_rtt(size: int, n: int) -> list[float]:
    async with Libp2pOverlay(Identity.generate()) as a, Libp2pOverlay(Identity.generate()) as b:
        b.serve(ECHO, echo)
        await a.connect(b.addresses[0])
        payload = b"x" * size
        times = []
        for _ in range(n):
            t = trio.current_time()
            async with a.request(b.peer_id, ECHO, payload) as resp:
                async for _chunk in resp:
                    pass
            times.append((trio.current_time() - t) * 1000)
        return times


async def raw_stream_rtt(size: int, n: int) -> list[float]:
    """The floor under our requests: echo on one persistent py-libp2p stream, no framing."""
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

    proto = TProtocol("/bench/raw-echo/1.0.0")

    async def handler(stream) -> None:  # type: ignore[no-untyped-def]
        while data := await stream.read(1 << 20):
            await stream.write(data)

    async with Libp2pOverlay(Identity.generate()) as a, Libp2pOverlay(Identity.generate()) as b:
        b.host.set_stream_handler(proto, handler)
        await a.connect(b.addresses[0])
        stream = await a.host.new_stream(ID.from_base58(b.peer_id), [proto])
        payload = b"x" * size
        times = []
        for _ in range(n):
            t = trio.current_time()
            await stream.write(payload)
            got = 0
            while got < size:
                got += len(await stream.read(1 << 20))
            times.append((trio.current_time() - t) * 1000)
        await stream.reset()
        return times


async def tcp_rtt(size: int, n: int) -> list[float]:
    async def handler(stream: trio.SocketStream) -> None:
        while True:
            data = await stream.receive_some(1 << 20)
            if not data:
                return
            await stream.send_all(data)

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(
            functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        payload = b"x" * size
        times = []
        for _ in range(n):
            t = trio.current_time()
            await stream.send_all(payload)
            got = 0
            while got < size:
                got += len(await stream.receive_some(1 << 20))
            times.append((trio.current_time() - t) * 1000)
        await stream.aclose()
        nursery.cancel_scope.cancel()
        return times


async def gossip_time_to_all(n: int, rounds: int) -> float:
    """Median seconds for one published message to reach all other n-1 nodes (line+ring)."""
    async with trio.open_nursery() as nursery:
        nodes: list[Libp2pOverlay] = []
        done = trio.Event()

        async def run(i: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
            async with Libp2pOverlay(Identity.generate()) as ov:
                nodes.append(ov)
                task_status.started()
                await done.wait()

        for i in range(n):
            await nursery.start(run, i)
        for i in range(1, n):  # each node links to two earlier ones: a connected mesh
            await nodes[i].connect(nodes[i - 1].addresses[0])
            if i > 1:
                await nodes[i].connect(nodes[i // 2].addresses[0])
        results = []
        async with trio.open_nursery() as subs:
            channels = []
            for ov in nodes[1:]:
                cm = ov.subscribe("bench")
                channels.append((cm, await cm.__aenter__()))
            await nodes[0].publish("bench", b"warm")  # nodes[0] joins the topic via fanout
            await trio.sleep(3.0)  # GossipSub builds its mesh on its 1 s heartbeat
            for _, ch in channels:
                while True:
                    try:
                        ch.receive_nowait()
                    except trio.WouldBlock:
                        break
            for r in range(rounds):
                data = b"round-%d" % r
                t = trio.current_time()
                await nodes[0].publish("bench", data)
                with trio.fail_after(10):
                    for _, ch in channels:
                        while (await ch.receive()).data != data:
                            pass
                results.append(trio.current_time() - t)
            for cm, _ in channels:
                await cm.__aexit__(None, None, None)
            subs.cancel_scope.cancel()
        done.set()
    return statistics.median(results)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def membership_timing(n: int) -> dict[str, float]:
    params = MembershipParams(heartbeat_interval=1.0, suspect_timeout=2.5, peer_timeout=5.0)
    nodes: list[Node] = []
    stops: dict[int, trio.CancelScope] = {}

    def make(boot: tuple[str, ...]) -> Node:
        ident = Identity.generate()
        cfg = NodeConfig(membership=params, gateway=GatewayParams(enabled=False),
                         network=NetworkParams(network_id="bench", bootstrap=boot))
        return Node(cfg, identity=ident, overlay=Libp2pOverlay(ident), rng=random.Random())

    async def run(node: Node, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            stops[id(node)] = scope
            async with node:
                nodes.append(node)
                task_status.started()
                await trio.sleep_forever()

    async def wait(pred, limit: float) -> float | None:
        t = trio.current_time()
        with trio.move_on_after(limit):
            while not pred():
                await trio.sleep(0.02)
            return trio.current_time() - t
        return None

    async with trio.open_nursery() as nursery:
        rss0 = rss_mib()
        await nursery.start(run, make(()))
        boot = (nodes[0].addresses[0],)
        rss1 = rss_mib()
        for _ in range(n - 1):
            await nursery.start(run, make(boot))
        converged = await wait(lambda: all(len(x.peers) == n - 1 for x in nodes), 60)
        rss_n = rss_mib()
        if converged is None:
            print(f"membership N={n}: tables did not converge in 60 s; sizes "
                  f"{sorted(len(x.peers) for x in nodes)}", flush=True)
            nursery.cancel_scope.cancel()
            return {"membership_n20_converged": 0,
                    "rss_per_extra_node_mib": round((rss_n - rss1) / (n - 1), 2)}
        joiner = make(boot)
        t_join = trio.current_time()
        await nursery.start(run, joiner)
        await wait(lambda: all(joiner.peer_id in x.peers for x in nodes[:n]), 30)
        seen = trio.current_time() - t_join  # includes the joiner's own start-up
        # "kill": cancel the node's scope: no goodbye gets out, peers must time it out
        victim = nodes[n // 2]
        stops[id(victim)].cancel()
        others = [x for x in nodes if x is not victim]
        dropped = await wait(lambda: all(victim.peer_id not in x.peers for x in others), 30)
        nursery.cancel_scope.cancel()
    return {
        "membership_n20_converged": 1,
        "join_seen_by_all_s": round(seen, 3),
        "kill_dropped_by_all_s": round(dropped, 3) if dropped is not None else -1,
        "peer_timeout_s": params.peer_timeout,
        "rss_first_node_mib": round(rss1 - rss0, 2),
        "rss_per_extra_node_mib": round((rss_n - rss1) / (n - 1), 2),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (from /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def membership_processes(n: int) -> dict[str, float]:
    """Membership timing with every node in its own process, as deployed: ``n`` node
    processes joining through one bootstrap address, then ``TRIALS`` rounds of a joiner
    (time until all members list it, its start-up included) and a SIGKILL of a member
    (time until all others drop it), read from each process's ``--json-events`` peer
    tables; the median and worst of the rounds. -1: a round not within 30 s."""
    peer_timeout = 5.0

    def config(tmp: Path, name: str, boot: list[str]) -> Path:
        path = tmp / f"{name}.yaml"
        path.write_text(textwrap.dedent(f"""\
            server_params: {{ip: 127.0.0.1, port: 0}}
            ledger_params: {{initial_credit: 100.0, initial_staked: 10.0}}
            models: []
            node: {{name: {name}, data_dir: {tmp}/data/{name}}}
            network: {{network_id: bench-members, bootstrap: {json.dumps(boot)}}}
            gateway: {{enabled: false}}
            membership: {{heartbeat_interval: 1.0, suspect_timeout: 2.5,
                          peer_timeout: {peer_timeout}}}
            """))
        return path

    def start(tmp: Path, name: str, boot: list[str]) -> ChildProcess:
        p = ChildProcess(["node", "--json-events", str(config(tmp, name, boot))])
        procs.append(p)
        return p

    def peers(p: ChildProcess) -> set[str]:
        return set(p.events[-1].get("peers", ())) if p.events else set()

    async def all_of(procs: list[ChildProcess], pred, within: float) -> float | None:
        """Seconds until ``pred`` holds for every process; None if not within ``within``."""
        begin = trio.current_time()
        failed = False
        try:
            async with trio.open_nursery() as nursery:
                for p in procs:
                    nursery.start_soon(p.wait_for, pred, within)
        except* (trio.TooSlowError, TestnetError):  # timed out, or a child exited
            failed = True
        return None if failed else trio.current_time() - begin

    def median(ts: list[float | None]) -> float:
        """The median of the rounds, -1 if any failed."""
        done = [t for t in ts if t is not None]
        return round(statistics.median(done), 3) if len(done) == len(ts) else -1.0

    def worst(ts: list[float | None]) -> float:
        done = [t for t in ts if t is not None]
        return round(max(done), 3) if len(done) == len(ts) else -1.0

    startups: list[float | None] = []
    seen: list[float | None] = []
    dropped: list[float | None] = []

    procs: list[ChildProcess] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        async with trio.open_nursery() as nursery:
            try:
                boot = [(await start(tmp, "n0", []).start(nursery))["addresses"][0]]
                with trio.fail_after(60):
                    async with trio.open_nursery() as starting:
                        for i in range(1, n):
                            starting.start_soon(start(tmp, f"n{i}", boot).start, nursery, 60.0)
                ids = {p.started["peer_id"] for p in procs}
                if await all_of(procs, lambda p: peers(p) >= ids - {p.started["peer_id"]},
                                60) is None:
                    print(f"membership, {n} processes: tables did not converge in 60 s; "
                          f"sizes {sorted(len(peers(p)) for p in procs)}", flush=True)
                    return {f"membership_procs_n{n}_converged": 0}
                # what an idle node costs in a network of n: CPU share of each process
                pids = [p.pid for p in procs if p.pid is not None]
                cpu0 = [cpu_seconds(pid) for pid in pids]
                await trio.sleep(5.0)
                idle = statistics.median((cpu_seconds(pid) - c) / 5.0
                                         for pid, c in zip(pids, cpu0, strict=True))
                # TRIALS rounds: a new node joins (time until all members list it), then a
                # long-standing member is SIGKILLed (time until all the others drop it)
                members = list(procs)
                for k in range(TRIALS):
                    t_join = trio.current_time()
                    joiner = start(tmp, f"joiner{k}", boot)
                    jid = (await joiner.start(nursery, 60.0))["peer_id"]
                    startups.append(trio.current_time() - t_join)  # until its node was up
                    t = await all_of(members, lambda p, j=jid: j in peers(p), 30)
                    seen.append(None if t is None else trio.current_time() - t_join)
                    members.append(joiner)
                    victim = members.pop(1 + k)
                    vid = victim.started["peer_id"]
                    victim.kill()
                    dropped.append(await all_of(members, lambda p, v=vid: v not in peers(p), 30))
            finally:
                for p in procs:
                    await p.stop()
                nursery.cancel_scope.cancel()

    def fmt(ts: list[float | None]) -> str:
        return " ".join("-" if t is None else f"{t:.2f}" for t in ts)

    print(f"membership, {n} node processes, each round: joiner's start-up {fmt(startups)} s, "
          f"seen by all {fmt(seen)} s, killed member dropped by all {fmt(dropped)} s",
          flush=True)
    return {f"membership_procs_n{n}_converged": 1,
            f"procs_n{n}_idle_cpu_per_node_pct": round(100 * idle, 1),
            f"procs_n{n}_join_seen_by_all_s": median(seen),
            f"procs_n{n}_join_seen_by_all_max_s": worst(seen),
            f"procs_n{n}_joiner_startup_s": median(startups),
            f"procs_n{n}_kill_dropped_by_all_s": median(dropped),
            f"procs_n{n}_kill_dropped_by_all_max_s": worst(dropped),
            "procs_peer_timeout_s": peer_timeout}


async def rss_per_node(n: int, settle: float = 10.0) -> float:
    """MiB of RSS per extra in-process node, n nodes gossiping heartbeats for ``settle`` s
    (a size at which one core carries them: at N=20 py-libp2p's queues back up, and the
    backlog, not the nodes, fills the memory)."""
    params = MembershipParams(heartbeat_interval=1.0, suspect_timeout=2.5, peer_timeout=5.0)
    nodes: list[Node] = []

    async def run(boot: tuple[str, ...], task_status=trio.TASK_STATUS_IGNORED) -> None:
        ident = Identity.generate()
        cfg = NodeConfig(membership=params, gateway=GatewayParams(enabled=False),
                         network=NetworkParams(network_id="bench-rss", bootstrap=boot))
        async with Node(cfg, identity=ident, overlay=Libp2pOverlay(ident),
                        rng=random.Random()) as node:
            nodes.append(node)
            task_status.started()
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(run, ())
        await trio.sleep(2.0)
        first = rss_mib()
        for _ in range(n - 1):
            await nursery.start(run, (nodes[0].addresses[0],))
        await trio.sleep(settle)
        per_node = (rss_mib() - first) / (n - 1)
        nursery.cancel_scope.cancel()
    return per_node


async def main(quick: bool) -> dict[str, float]:
    n_rtt = 200 if quick else 1000
    out: dict[str, float] = {}
    for size, label in ((1024, "1kb"), (100 * 1024, "100kb")):
        lp = await libp2p_rtt(size, n_rtt)
        raw = await raw_stream_rtt(size, n_rtt)
        tcp = await tcp_rtt(size, n_rtt)
        out[f"raw_stream_rtt_{label}_p50_ms"] = round(pct(raw, 0.5), 3)
        out[f"rtt_{label}_p50_vs_raw_stream_ratio"] = round(pct(lp, 0.5) / pct(raw, 0.5), 2)
        out[f"rtt_{label}_p50_ms"] = round(pct(lp, 0.5), 3)
        out[f"rtt_{label}_p99_ms"] = round(pct(lp, 0.99), 3)
        out[f"tcp_rtt_{label}_p50_ms"] = round(pct(tcp, 0.5), 3)
        out[f"rtt_{label}_p50_vs_tcp_ratio"] = round(pct(lp, 0.5) / pct(tcp, 0.5), 1)
        print(f"round trip {label}: libp2p p50 {pct(lp, 0.5):.3f} ms p99 {pct(lp, 0.99):.3f} ms"
              f" | raw py-libp2p stream p50 {pct(raw, 0.5):.3f} ms"
              f" | plain TCP p50 {pct(tcp, 0.5):.3f} ms", flush=True)
    for n in (10, 30):
        t = await gossip_time_to_all(n, 5 if quick else 10)
        out[f"gossip_time_to_all_n{n}_ms"] = round(t * 1000, 1)
        print(f"gossip time-to-all, N={n}: {t * 1000:.1f} ms", flush=True)
    out["rss_per_extra_node_n10_mib"] = round(await rss_per_node(10), 2)
    print(f"RSS per extra in-process node at N=10: {out['rss_per_extra_node_n10_mib']} MiB",
          flush=True)
    for n in (10, 20):
        mp = await membership_processes(n)
        out.update(mp)
        if mp[f"membership_procs_n{n}_converged"]:
            print(f"membership, {n} node processes ({TRIALS} rounds, median / worst): joiner "
                  f"seen by all in {mp[f'procs_n{n}_join_seen_by_all_s']:.2f} / "
                  f"{mp[f'procs_n{n}_join_seen_by_all_max_s']:.2f} s (its start-up "
                  f"{mp[f'procs_n{n}_joiner_startup_s']:.2f} s of it); SIGKILLed node dropped by "
                  f"all in {mp[f'procs_n{n}_kill_dropped_by_all_s']:.2f} / "
                  f"{mp[f'procs_n{n}_kill_dropped_by_all_max_s']:.2f} s (peer_timeout "
                  f"{mp['procs_peer_timeout_s']:.0f} s; -1: not within 30 s); an idle node "
                  f"process uses {mp[f'procs_n{n}_idle_cpu_per_node_pct']}% of a core",
                  flush=True)
    m = await membership_timing(20)
    out.update(m)
    if m["membership_n20_converged"]:
        print(f"membership N=20: joiner seen by all in {m['join_seen_by_all_s']:.2f} s; killed "
              f"node dropped by all in {m['kill_dropped_by_all_s']:.2f} s (peer_timeout "
              f"{m['peer_timeout_s']:.0f} s)", flush=True)
    print(f"RSS per extra in-process node at N=20: {m['rss_per_extra_node_mib']} MiB",
          flush=True)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    args = parser.parse_args()
    figures = trio.run(main, args.quick)
    print(json.dumps(figures))
    sys.exit(0)
