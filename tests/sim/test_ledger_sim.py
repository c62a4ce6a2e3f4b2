"""The ledger on MemoryOverlay in virtual time: 20 nodes, payments, a partition and its heal."""

from __future__ import annotations

import random
from collections import Counter

import trio

from wwwserve.clock import SIM_EPOCH, trio_wall_clock
from wwwserve.config import GatewayParams, MembershipParams, NetworkParams, NodeConfig, NodeParams
from wwwserve.identity import Identity
from wwwserve.ledger import UNIT, Allocation, Genesis, Payment, decode_tx, sign_tx
from wwwserve.node import Node
from wwwserve.overlay import MemoryNetwork
from wwwserve.testing import seed_trio_scheduler

PARAMS = MembershipParams(heartbeat_interval=1.0, suspect_timeout=2.5, peer_timeout=5.0)


def identities(n: int, seed: int) -> list[Identity]:
    return [Identity.from_seed(random.Random(seed * 1000 + i).randbytes(32)) for i in range(n)]


def make_genesis(ids: list[Identity]) -> Genesis:
    return Genesis(network="sim", time=SIM_EPOCH, slot_length=2.0,
                   allocations=tuple(Allocation(i.peer_id, 1000 * UNIT, 10 * UNIT)
                                     for i in ids))


async def start_network(nursery: trio.Nursery, net: MemoryNetwork, ids: list[Identity],
                        genesis: Genesis, tmp_path, seed: int) -> list[Node]:
    nodes: list[Node] = []
    for k, ident in enumerate(ids):
        boot = (nodes[0].addresses[0],) if nodes else ()
        cfg = NodeConfig(network=NetworkParams(network_id="sim", bootstrap=boot),
                         membership=PARAMS, gateway=GatewayParams(enabled=False),
                         node=NodeParams(name=f"n{k}", data_dir=tmp_path / f"n{k}"))
        node = Node(cfg, identity=ident, overlay=net.node(ident), genesis=genesis,
                    clock=trio_wall_clock(), rng=random.Random(seed + k))
        await nursery.start(node.run)
        nodes.append(node)
    return nodes


async def pay_randomly(nodes: list[Node], rng: random.Random, seconds: float,
                       log: Counter[str]) -> None:
    """Every node pays a random other node 0.5 credit every ~5 s (bounded)."""
    end = trio.current_time() + seconds
    while trio.current_time() < end:
        await trio.sleep(rng.expovariate(len(nodes) / 5.0))
        payer, payee = rng.sample(nodes, 2)
        log["sent"] += payer.credit.pay(payee.peer_id, 0.5, f"req-{log['n']}")
        log["n"] += 1


def payments_on_chain(node: Node) -> list[tuple[str, str]]:
    """(payer, request id) of every payment in ``node``'s best chain."""
    assert node.ledger is not None
    chain = node.ledger.chain
    out = []
    for block in chain.canonical_blocks(1, chain.height):
        for env in block.txs:
            tx = decode_tx(env).tx
            if isinstance(tx, Payment):
                out.append((tx.payer, tx.request_id))
    return out


async def test_twenty_replicas_agree_through_payments_and_a_partition(autojump_clock,
                                                                         tmp_path):
    seed = 7
    seed_trio_scheduler(seed)
    rng = random.Random(seed)
    ids = identities(20, seed)
    genesis = make_genesis(ids)
    log: Counter[str] = Counter()
    async with MemoryNetwork(seed=seed, latency=0.005) as net, trio.open_nursery() as nursery:
        nodes = await start_network(nursery, net, ids, genesis, tmp_path, seed)
        await trio.sleep(10)
        ledgers = [n.ledger for n in nodes]
        assert all(lg is not None for lg in ledgers)

        # eight minutes of payments on the whole network, then two partitioned
        await pay_randomly(nodes, rng, 480, log)
        await trio.sleep(20)
        final = [lg.chain.finalized_height for lg in ledgers]  # type: ignore[union-attr]
        assert min(final) > 50
        low = min(final)
        # every replica has the same final chain (compare at the lowest final height)
        assert len({lg.chain.canonical_id(low) for lg in ledgers}) == 1  # type: ignore[union-attr]
        assert len({lg.chain.state.root() for lg in ledgers}) == 1  # type: ignore[union-attr]

        # a partition: 14 / 6 nodes; both sides keep paying and growing their chains
        majority, minority = nodes[:14], nodes[14:]
        net.partition([n.peer_id for n in majority], [n.peer_id for n in minority])
        h0 = [n.ledger.chain.height for n in nodes]  # type: ignore[union-attr]
        async with trio.open_nursery() as side:
            side.start_soon(pay_randomly, majority, rng, 120, log)
            side.start_soon(pay_randomly, minority, rng, 120, log)
        grown = [n.ledger.chain.height - h for n, h in zip(nodes, h0, strict=True)]  # type: ignore[union-attr]
        assert min(grown[:14]) > 20 and min(grown[14:]) > 5
        minority_tip = minority[0].ledger.chain.tip  # type: ignore[union-attr]
        assert minority_tip != majority[0].ledger.chain.tip  # type: ignore[union-attr]
        minority_final = minority[0].ledger.chain.finalized_height  # type: ignore[union-attr]

        # heal: the minority reorganises onto the majority's chain and keeps its payments
        net.heal()
        await trio.sleep(60)
        tips = {n.ledger.chain.tip for n in nodes}  # type: ignore[union-attr]
        assert len(tips) == 1
        assert minority[0].ledger.chain.stats.get("reorganizations", 0) >= 1  # type: ignore[union-attr]
        assert minority[0].ledger.chain.finalized_height > minority_final  # type: ignore[union-attr]
        paid = payments_on_chain(nodes[0])
        assert len(paid) == len(set(paid))  # no request paid twice
        # every payment that went out, on either side, is on the chain exactly once
        assert log["sent"] > 150
        assert len(paid) == log["sent"]
        print(f"height {nodes[0].ledger.chain.height}, final "  # type: ignore[union-attr]
              f"{nodes[0].ledger.chain.finalized_height}, payments {len(paid)}, "  # type: ignore[union-attr]
              f"minority reorgs {minority[0].ledger.chain.stats}")  # type: ignore[union-attr]
        state = nodes[0].ledger.chain.state  # type: ignore[union-attr]
        assert state.total() == state.genesis_supply
        nursery.cancel_scope.cancel()


async def test_payments_submitted_and_confirmed_are_counted_apart(autojump_clock, tmp_path):
    """A payment counts as submitted when it is signed and sent, and as confirmed only once
    the chain holds it (the dashboard used to show submissions as payments)."""
    from wwwserve.testing import MemoryTestnet

    async with MemoryTestnet(3, ledger=True, data_dir=tmp_path, seed=2,
                             target_token_usage=[0.0, 0.6, 0.6]) as net:
        user = net.nodes[0]
        for i in range(3):
            await user.complete(net.request(f"u{i}", prompt_tokens=50, max_tokens=16))
        st = user.status()
        assert st.payments is not None
        submitted = st.payments["submitted"]
        assert submitted == user.dispatcher.stats["payments_submitted"] >= 1
        assert user.ledger is not None
        mine = [p for p in payments_on_chain(user) if p[0] == user.peer_id]
        assert st.payments["confirmed"] == len(mine)
        with trio.fail_after(60):  # virtual seconds: a few blocks
            while user.status().payments["confirmed"] < submitted:  # type: ignore[index]
                await trio.sleep(1.0)
        assert len([p for p in payments_on_chain(user) if p[0] == user.peer_id]) == submitted


async def test_a_payment_whose_nonce_a_transaction_from_before_a_restart_took_is_signed_again(
        autojump_clock, tmp_path):
    """After a restart a node's nonces start again from the chain's, while a transaction it
    signed before still waits in its peers' pools under the same nonce. When the peers'
    chain takes that one, the new payment loses its nonce: it must be signed again, not
    lost. (The payer is cut off meanwhile, so the peers' blocks decide which one wins.)"""
    ids = identities(3, seed=5)
    async with MemoryNetwork(seed=5) as net, trio.open_nursery() as nursery:
        nodes = await start_network(nursery, net, ids, make_genesis(ids), tmp_path, seed=5)
        me, peer = nodes[0], nodes[1]
        assert me.ledger is not None and peer.ledger is not None
        with trio.fail_after(30):  # virtual seconds: what it sent at start goes on the chain
            while me.ledger.chain.pending(me.peer_id):
                await trio.sleep(1.0)
        net.partition([me.peer_id], [n.peer_id for n in nodes[1:]])
        nonce = me.ledger.chain.state.nonce(me.peer_id)
        before_restart = sign_tx(Payment(network="sim", payer=me.peer_id, payee=peer.peer_id,
                                         amount=UNIT, request_id="old", nonce=nonce), ids[0])
        for other in nodes[1:]:
            assert other.ledger is not None
            other.ledger.chain.add_tx(before_restart, other.ledger.wall_clock())
        assert me.credit.pay(peer.peer_id, 2.0, "new")
        assert [s.tx.nonce for s in me.ledger.chain.pending(me.peer_id)] == [nonce]
        with trio.fail_after(30):
            while (me.peer_id, "old") not in peer.ledger.chain.state.paid:
                await trio.sleep(1.0)
        net.heal()
        with trio.fail_after(60):
            while {"old", "new"} - {rid for _, rid in payments_on_chain(peer)}:
                await trio.sleep(1.0)
        assert me.ledger.stats.get("payments_resigned", 0) >= 1
        assert sorted(payments_on_chain(me)) == [(me.peer_id, "new"), (me.peer_id, "old")]
        nursery.cancel_scope.cancel()
