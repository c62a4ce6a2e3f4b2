"""A real partition between node processes: three network namespaces joined by veth pairs
to a bridge in a fourth; taking one node's link down cuts it off, bringing it up heals.

Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2; skipped with the reason where
the machine does not allow it. Everything lives in namespaces this test creates and
deletes: the machine's own network is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from wwwserve.ledger import BlockStore, Chain, Genesis
from wwwserve.ledger.service import replay
from wwwserve.testing.processes import ProcessTestnet, _peers_of

N = 3
SUBNET = "10.213.7"


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10,
                          check=False)


def _why_not() -> str | None:
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"wwprobe{os.getpid() % 100000}"
    made = _ip("netns", "add", probe)
    if made.returncode != 0:
        return f"`ip netns add` is not allowed here: {made.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


@pytest.fixture
def namespaces() -> Iterator[tuple[list[str], list[str], str]]:
    """``N`` node namespaces on one bridge (in a hub namespace); yields (names, hosts, hub)."""
    why = _why_not()
    if why is not None:
        pytest.skip(why)
    tag = f"{os.getpid() % 100000}"
    hub = f"wwhub{tag}"
    names = [f"ww{tag}n{k}" for k in range(N)]
    hosts = [f"{SUBNET}.{k + 1}" for k in range(N)]
    steps = [("netns", "add", hub), ("-n", hub, "link", "set", "lo", "up"),
             ("-n", hub, "link", "add", "br0", "type", "bridge"),
             ("-n", hub, "link", "set", "br0", "up")]
    for k, ns in enumerate(names):
        steps += [("netns", "add", ns), ("-n", ns, "link", "set", "lo", "up"),
                  ("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"h{k}",
                   "netns", hub),
                  ("-n", ns, "addr", "add", f"{hosts[k]}/24", "dev", "eth0"),
                  ("-n", ns, "link", "set", "eth0", "up"),
                  ("-n", hub, "link", "set", f"h{k}", "master", "br0"),
                  ("-n", hub, "link", "set", f"h{k}", "up")]
    try:
        for step in steps:
            done = _ip(*step)
            assert done.returncode == 0, f"ip {' '.join(step)}: {done.stderr}"
        yield names, hosts, hub
    finally:
        for ns in [*names, hub]:
            _ip("netns", "del", ns)


def _link(hub: str, k: int, state: str) -> None:
    done = _ip("-n", hub, "link", "set", f"h{k}", state)
    assert done.returncode == 0, done.stderr


def _final_chain(root: Path, k: int, genesis: Genesis) -> Chain:
    chain = Chain(genesis)
    replay(chain, BlockStore(root / f"node{k}" / "blocks"), repair=False)
    return chain


@pytest.mark.slow
async def test_a_link_down_partitions_nodes_and_link_up_heals_them(namespaces, tmp_path):
    names, hosts, hub = namespaces
    hb = 0.5  # peer_timeout = 8 heartbeats = 4 s
    async with ProcessTestnet(N, root=tmp_path, netns=names, hosts=hosts, p_inspect=0.0,
                              heartbeat_interval=hb) as net:
        ids = [n.peer_id for n in net.nodes]
        assert all(a.startswith(f"/ip4/{hosts[k]}/") for k, node in enumerate(net.nodes)
                   for a in node.addresses)

        def sees(k: int, expected: set[str]):  # type: ignore[no-untyped-def]
            return lambda proc: _peers_of(proc) == expected

        _link(hub, 2, "down")  # node 2 is cut off from both others
        with trio.fail_after(8 * hb + 10):
            for k in (0, 1):
                await net.nodes[k].process.wait_for(sees(k, {ids[1 - k]}), 60)
            await net.nodes[2].process.wait_for(sees(2, set()), 60)
        # (the nodes' gateways live inside their namespaces, out of this process's reach:
        # no status to poll, so the ledger gets fixed time here)
        await trio.sleep(6)  # both sides keep producing blocks apart
        _link(hub, 2, "up")
        await net.wait_converged(60)  # node 2 dials its bootstrap again; tables merge
        await trio.sleep(20)  # the ledger reconciles: the minority side reorganises
    assert net.genesis_path is not None
    genesis = Genesis.load(net.genesis_path)
    chains = [_final_chain(tmp_path, k, genesis) for k in range(N)]
    final = min(c.finalized_height for c in chains)
    assert final > 0
    assert len({c.canonical_id(final) for c in chains}) == 1
    assert all(c.state.total() == c.state.genesis_supply + c.state.issued for c in chains)
