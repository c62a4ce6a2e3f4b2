"""A node restarted from the same key is back in its peers' tables within seconds, over
real libp2p on loopback, however busy it was before.

py-libp2p 0.8.1 starts a node's GossipSub sequence numbers at ``int(time.time())`` and
names a message by sender and sequence number, remembered for 120 s: a node that
published more than one message a second before a restart reused names its peers had
seen, and they dropped its heartbeats as duplicates until it caught up (peers saw a
restarted node after 58, 28, 2.7 and 24 s)."""

from __future__ import annotations

import random

import trio

from waiting import wait_until
from wwwserve.config import (
    GatewayParams,
    MembershipParams,
    ModelConfig,
    NetworkParams,
    NodeConfig,
    ServerParams,
)
from wwwserve.engines import SimEngine, get_profile
from wwwserve.identity import Identity
from wwwserve.market import CreditBook
from wwwserve.node import Node
from wwwserve.wire import encode, seal

MODEL = "Qwen/Qwen3-8B"
PARAMS = MembershipParams(heartbeat_interval=0.25, suspect_timeout=1.5, peer_timeout=3.0)
BUSY = 300  # messages the node publishes before each restart (blocks, txs: a busy node)


def node(i: int, book: CreditBook, bootstrap: tuple[str, ...]) -> Node:
    ident = Identity.from_seed(bytes([i + 81]) * 32)
    cfg = NodeConfig(
        server_params=ServerParams(ip="127.0.0.1", port=0),
        models=(ModelConfig(model_path=MODEL, engine="sim"),),
        network=NetworkParams(network_id="rejoin", bootstrap=bootstrap),
        membership=PARAMS, gateway=GatewayParams(enabled=False))
    return Node(cfg, identity=ident,
                engines={MODEL: SimEngine(get_profile("h100/qwen3-8b"), models=(MODEL,))},
                credit=book.open(ident.peer_id, 100.0, 10.0), rng=random.Random(i))


async def test_a_busy_node_restarted_five_times_is_back_within_3_s_each_time() -> None:
    book = CreditBook(shared=True)
    async with trio.open_nursery() as nursery:
        peers: list[Node] = []
        for i in range(2):
            peers.append(node(i, book, tuple(p.addresses[0] for p in peers[:1])))
            await nursery.start(peers[-1].run)
        boot = (peers[0].addresses[0],)
        took: list[float] = []
        for _ in range(5):
            busy = node(9, book, boot)
            scope = trio.CancelScope()

            async def run(busy: Node = busy, scope: trio.CancelScope = scope, *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                          ) -> None:
                with scope:
                    await busy.run(task_status=task_status)

            await nursery.start(run)
            me = busy.peer_id
            incarnation = busy.membership.incarnation

            def back(incarnation: int = incarnation, me: str = me) -> bool:
                return all(me in p.peers and p.peers[me].incarnation == incarnation
                           for p in peers)

            took.append(await wait_until(back, within=3, every=0.02,
                                         what="every peer sees the restarted node"))
            membership = busy.membership
            for _ in range(BUSY):
                last = membership.make_heartbeat()
                await busy.overlay.publish(membership.topic, encode(seal(last, busy.identity)))

            def heard(seq: int = last.seq, me: str = me) -> bool:
                return all(p.peers[me].seq >= seq for p in peers if me in p.peers)

            await wait_until(heard, within=10, what="the peers heard the busy node's messages")
            scope.cancel()  # a restart: the same key, the same config
        nursery.cancel_scope.cancel()
    assert max(took) < 3, took
