"""GossipSub meshes over real libp2p stay within their degree bounds.

py-libp2p 0.8.1 grafts every equally scored peer on every heartbeat ("opportunistic
grafting"), which fills each mesh with all peers; Libp2pOverlay turns that off. The mesh
is read from the router (private state: no public API exposes it).
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio

from wwwserve.identity import Identity
from wwwserve.overlay import Libp2pOverlay

TOPIC = "/wwwserve/test/mesh/1"


def mesh_size(overlay: Libp2pOverlay) -> int:
    router = overlay._pubsub.router  # type: ignore[union-attr]
    return len(router.mesh.get(TOPIC, ()))


async def test_meshes_stay_between_degree_bounds_when_every_peer_is_connected():
    n, degree = 7, 2  # bounds 1..4, while every node is connected to 6 peers
    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(
            Libp2pOverlay(Identity.generate(), gossip_degree=degree, gossip_heartbeat=0.2))
            for _ in range(n)]
        for i, a in enumerate(nodes):
            for b in nodes[i + 1:]:
                await a.connect(b.addresses[0])
        inboxes = [await stack.enter_async_context(x.subscribe(TOPIC)) for x in nodes]
        with trio.move_on_after(10):
            while min(mesh_size(x) for x in nodes) < 1:
                await trio.sleep(0.05)
        await trio.sleep(2.0)  # ten router heartbeats: without the fix, meshes reach 6
        sizes = sorted(mesh_size(x) for x in nodes)
        # and gossip still reaches everyone
        await nodes[0].publish(TOPIC, b"hello")
        got = []
        with trio.move_on_after(5):
            for inbox in inboxes[1:]:
                got.append((await inbox.receive()).data)
    # (asserted outside the overlays: a failure inside them ends up deep in nursery groups)
    assert sizes[0] >= 1 and sizes[-1] <= 2 * degree, sizes
    assert got == [b"hello"] * (n - 1)
