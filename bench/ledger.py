"""Ledger benchmark: transaction validation, block application, block spread, disk use.

Measured in one run and printed, ending with one JSON line:

- transactions validated per second on one core (decode + Ed25519 check (libsodium) + state
  rules), with bare OpenSSL Ed25519 verification (``cryptography``) on the same machine, in
  the same run, as the baseline;
- blocks (of ``BLOCK_TXS`` payments) applied per second by a replica: signature, proposer
  lottery, every transaction, state root; cold (no transaction seen before) and with the
  transactions already verified when they were gossiped (the usual case);
- p50 time for a block (with ``SPREAD_TXS`` payments) published by one of 20 in-process
  libp2p nodes to be validated and applied by all the others (GossipSub);
- bytes on disk per 1,000 payments in the block file.

Targets (issue 4): >= 5,000 tx/s validated on one core; block at all 20 nodes <= 500 ms p50.

    python bench/ledger.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from wwwserve.identity import Identity
from wwwserve.ledger import (
    UNIT,
    Allocation,
    Block,
    BlockStore,
    Chain,
    Genesis,
    Payment,
    decode_tx,
    sign_tx,
)
from wwwserve.overlay import Libp2pOverlay
from wwwserve.wire import decode, encode

NET = "bench"
BLOCK_TXS = 500
SPREAD_TXS = 100


def accounts(n: int) -> list[Identity]:
    return [Identity.from_seed(i.to_bytes(32, "big")) for i in range(1, n + 1)]


def genesis(ids: list[Identity]) -> Genesis:
    return Genesis(network=NET, time=0.0, slot_length=2.0,
                   allocations=tuple(Allocation(i.peer_id, 10**6 * UNIT, 10 * UNIT)
                                     for i in ids))


def payments(ids: list[Identity], n: int, start_nonce: int = 0) -> list[bytes]:
    """``n`` valid payments, round robin over the accounts."""
    out = []
    k = len(ids)
    for j in range(n):
        payer, payee = ids[j % k], ids[(j + 1) % k]
        tx = Payment(network=NET, payer=payer.peer_id, payee=payee.peer_id, amount=UNIT,
                     request_id=f"r{start_nonce}-{j}", nonce=start_nonce + j // k)
        out.append(sign_tx(tx, payer).envelope)
    return out


def tx_validation_rate(n: int) -> tuple[float, float]:
    ids = accounts(50)
    g = genesis(ids)
    envelopes = payments(ids, n)
    clear_caches()
    state = g.state()
    t = time.perf_counter()
    for env in envelopes:
        state.apply(decode_tx(env), height=1)
    rate = n / (time.perf_counter() - t)
    # baseline: bare Ed25519 verification of as many signatures, same machine, same run
    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    sigs = [(b"m%d" % i, key.sign(b"m%d" % i)) for i in range(n)]
    t = time.perf_counter()
    for m, s in sigs:
        pub.verify(s, m)
    return rate, n / (time.perf_counter() - t)


def make_blocks(ids: list[Identity], g: Genesis, blocks: int, per_block: int) -> list[Block]:
    chain = Chain(g, max_block_txs=per_block, pool_per_account=100_000, pool_size=10**7)
    made: list[Block] = []
    slot = 1
    sent = 0
    while len(made) < blocks:
        for env in payments(ids, per_block, start_nonce=sent // len(ids)):
            chain.add_tx(env, now=0.0)
        sent += per_block
        while True:
            leader = chain.leader_of(slot)
            ident = next(i for i in ids if i.peer_id == leader)
            block = chain.propose(ident, slot)
            slot += 1
            if block is not None:
                assert len(block.txs) == per_block, len(block.txs)
                made.append(block)
                break
    return made


def clear_caches() -> None:
    """Forget verified signatures and decoded messages (a replica seeing them first)."""
    from wwwserve import identity, wire

    identity._verify_cached.cache_clear()
    wire._decode_cached.cache_clear()


def block_apply_rate(blocks: list[Block], g: Genesis, *, cold: bool) -> float:
    """Blocks/s; ``cold``: no transaction seen before (else all came by gossip first)."""
    chain = Chain(g, max_block_txs=BLOCK_TXS)
    encoded = [encode(b) for b in blocks]
    if cold:
        clear_caches()
    t = time.perf_counter()
    for data in encoded:
        chain.add_block(decode(data, expect=Block))
    assert chain.height == len(blocks)
    return len(blocks) / (time.perf_counter() - t)


async def block_spread(n: int, rounds: int) -> list[float]:
    """Seconds until a block published by node 0 is applied by all n-1 others."""
    ids = accounts(n)
    g = genesis(ids)
    blocks = make_blocks(ids, g, rounds + 1, SPREAD_TXS)
    topic = f"wwwserve/{NET}/ledger/block/1"
    results: list[float] = []
    async with trio.open_nursery() as nursery:
        overlays: list[Libp2pOverlay] = []
        done = trio.Event()

        async def run(i: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
            async with Libp2pOverlay(ids[i]) as ov:
                overlays.append(ov)
                task_status.started()
                await done.wait()

        for i in range(n):
            await nursery.start(run, i)
        for i in range(1, n):
            await overlays[i].connect(overlays[i - 1].addresses[0])
            if i > 1:
                await overlays[i].connect(overlays[i // 2].addresses[0])
        chains = [Chain(g) for _ in range(n)]
        applied: dict[int, trio.Event] = {}
        counts: dict[int, int] = {}

        async def replica(k: int, ch: trio.MemoryReceiveChannel) -> None:  # type: ignore[type-arg]
            async for msg in ch:
                block = decode(msg.data, expect=Block)
                chains[k].add_block(block)
                if chains[k].height == block.height and block.height in applied:
                    counts[block.height] = counts.get(block.height, 0) + 1
                    if counts[block.height] == n - 1:
                        applied[block.height].set()

        cms = []
        async with trio.open_nursery() as subs:
            for k in range(1, n):
                cm = overlays[k].subscribe(topic)
                ch = await cm.__aenter__()
                cms.append(cm)
                subs.start_soon(replica, k, ch)
            for b in blocks[:1]:  # warm up the mesh with the first block
                applied[b.height] = trio.Event()
                await overlays[0].publish(topic, encode(b))
            await trio.sleep(3.0)
            for b in blocks[1:]:
                ev = applied[b.height] = trio.Event()
                t = trio.current_time()
                await overlays[0].publish(topic, encode(b))
                with trio.fail_after(20):
                    await ev.wait()
                results.append(trio.current_time() - t)
                await trio.sleep(0.2)
            subs.cancel_scope.cancel()
        for cm in cms:
            await cm.__aexit__(None, None, None)
        done.set()
    return results


def disk_per_1000_payments(blocks: list[Block]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = BlockStore(Path(tmp) / "blocks")
        txs = 0
        for b in blocks:
            store.append(encode(b))
            txs += len(b.txs)
        return store.size() / txs * 1000


def main(quick: bool) -> dict[str, float]:
    results: dict[str, float] = {}
    n = 2000 if quick else 10000
    rate, ed = tx_validation_rate(n)
    results["tx_validated_per_s"] = rate
    results["ed25519_verify_openssl_per_s"] = ed
    results["tx_validation_vs_openssl_verify_ratio"] = rate / ed
    ids = accounts(50)
    g = genesis(ids)
    blocks = make_blocks(ids, g, 4 if quick else 10, BLOCK_TXS)
    results["block_apply_cold_per_s"] = block_apply_rate(blocks, g, cold=True)
    results["block_apply_cold_tx_per_s"] = results["block_apply_cold_per_s"] * BLOCK_TXS
    # the usual case: the block's transactions were gossiped (and verified) before it
    results["block_apply_txs_seen_per_s"] = block_apply_rate(blocks, g, cold=False)
    results["disk_bytes_per_1000_payments"] = disk_per_1000_payments(blocks)
    spread = trio.run(block_spread, 20, 5 if quick else 15)
    results["block_to_all_20_p50_ms"] = 1000 * statistics.median(spread)
    results["block_to_all_20_max_ms"] = 1000 * max(spread)
    return {k: round(v, 3) for k, v in results.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    args = parser.parse_args()
    res = main(args.quick)
    for key, value in res.items():
        print(f"{key:>36}: {value}", file=sys.stderr)
    print(json.dumps(res))
