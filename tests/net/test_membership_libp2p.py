"""Gossip membership over real libp2p on loopback, 5 nodes in one process."""

from __future__ import annotations

import gc
import os
import random
import warnings

import trio

from waiting import wait_until
from wwwserve.config import GatewayParams, MembershipParams, NetworkParams, NodeConfig
from wwwserve.identity import Identity
from wwwserve.node import Node
from wwwserve.overlay import Libp2pOverlay

NO_GATEWAY = GatewayParams(enabled=False)
PARAMS = MembershipParams(heartbeat_interval=0.5, suspect_timeout=1.5, peer_timeout=3.0)


def make_node(bootstrap: tuple[str, ...] = ()) -> Node:
    ident = Identity.generate()
    cfg = NodeConfig(membership=PARAMS, gateway=NO_GATEWAY,
                     network=NetworkParams(network_id="nettest", bootstrap=bootstrap))
    return Node(cfg, identity=ident, overlay=Libp2pOverlay(ident), rng=random.Random())


async def test_five_nodes_discover_each_other_through_one_bootstrap():
    first = make_node()
    async with first:
        boot = (first.addresses[0],)
        others = [make_node(boot) for _ in range(4)]
        async with others[0], others[1], others[2], others[3]:
            everyone = [first, *others]
            ids = {n.peer_id for n in everyone}
            await wait_until(lambda: all(set(n.peers) == ids - {n.peer_id} for n in everyone),
                             within=15, what="every node sees every other")
            # a silent node (its overlay torn down under it) is dropped by the others
            victim = others[-1]
            gone = victim.peer_id
        # others[-1] left cleanly with the rest; first sees all four go
        await wait_until(lambda: gone not in first.peers, within=PARAMS.peer_timeout + 1,
                         what="the first node sees the others go")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_shutdown_leaves_no_sockets_or_resource_warnings():
    before = _open_fds()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        for _ in range(2):
            a = make_node()
            async with a:
                b = make_node((a.addresses[0],))
                async with b:
                    await wait_until(lambda a=a: len(a.peers) == 1, within=10,
                                     what="two nodes meet")
        gc.collect()
    await trio.sleep(0.2)
    assert _open_fds() <= before + 2  # leftovers would be listeners and sockets
