"""Real world: a red team against four honest node processes on one private ledger.

The attacker is a node of its own, in the test process, on real libp2p, with a funded and
staked key in the genesis (it stakes what its policy wants, as the honest nodes do). While
the honest ``n0`` serves its users (offloading and paying on the chain), the attacker plays
every strategy of :mod:`wwwserve.sim.attacks` at once and, beside them, what a red team did
to real nodes:

1. six bytes on ``/meshsub/1.1.0`` to every node;
2. duel settlements for duels that never happened (a victim "did not answer", a victim as a
   "silent" judge);
3. a second block for every slot it wins (equivocation);
4. 400 KiB side blocks signed by keys without stake;
5. a thousand payments that can never apply (free keys, far nonces, overspending);
6. offers from strangers without an account;
7. judge requests from a stake-less stranger, with a duel record naming the victim;
8. unfinished 4 MiB mux frames on many streams, from many identities;
9. users reusing ``X-Request-Id`` values (each pair once made ``n0`` sign a payment that
   could never apply, and its later payments stuck behind it).

Afterwards every honest process is up, they agree on one chain whose finality moves, no
honest stake moved, the equivocator is slashed, the block files stayed small, ``n0``'s
payments kept applying, strangers were served nothing, and the memory a victim spent on
unfinished frames stayed within its budget.
"""

from __future__ import annotations

import json
import random
import struct
import textwrap
import time
from pathlib import Path
from typing import Any

import openai
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from waiting import wait_until
from wwwserve.config import load_config
from wwwserve.duel.service import JUDGE_PROTOCOL, JudgeRequest
from wwwserve.engines import CompletionRequest
from wwwserve.errors import OverlayError, ProtocolError
from wwwserve.evidence import DuelRecord, digest
from wwwserve.identity import Identity, load_or_create_identity
from wwwserve.ledger import (
    UNIT,
    Allocation,
    BlockStore,
    Chain,
    Genesis,
    Payment,
    make_block,
    sign_tx,
)
from wwwserve.ledger.service import block_topic, replay, tx_topic
from wwwserve.market.messages import OFFLOAD_PROTOCOL, Offload, ProbeReply
from wwwserve.node import Node
from wwwserve.overlay import Libp2pOverlay
from wwwserve.overlay._mux import MUX_PROTOCOL
from wwwserve.sim.attacks import STRATEGIES, Target, check_honest_stakes, play
from wwwserve.testing import ChildProcess
from wwwserve.wire import decode, encode, seal

MODEL = "Qwen/Qwen3-8B"
NETWORK = "e2e-red-team"
N = 4
ATTACK_SECONDS = 20.0
MiB = 1 << 20


def write_configs(tmp: Path) -> tuple[list[Path], Path]:
    ids = [load_or_create_identity(tmp / f"n{k}.key") for k in range(N)]
    attacker = load_or_create_identity(tmp / "attacker.key")
    genesis = Genesis(network=NETWORK, time=float(int(time.time())), slot_length=1.0,
                      allocations=(*(Allocation(i.peer_id, 990 * UNIT, 10 * UNIT)
                                     for i in ids),
                                   Allocation(attacker.peer_id, 500 * UNIT, 15 * UNIT)))
    (tmp / "genesis.yaml").write_text(genesis.to_yaml())

    def config(name: str, key: str, *, low: bool, gateway: bool) -> Path:
        path = tmp / f"{name}.yaml"
        path.write_text(textwrap.dedent(f"""\
            server_params: {{ip: 127.0.0.1, port: 0, offload_frequency: 1.0,
                             queue_frequency: 1.0, accept_frequency: {0.0 if low else 1.0}}}
            models:
              - model_path: {MODEL}
                engine: sim
                sim_profile: {"rtx3090/qwen3-8b" if low else "h100/qwen3-8b"}
                dispatch_params: {{target_token_usage: {0.02 if low else 0.9}}}
            node: {{name: {name}, data_dir: data/{name}, key_path: {key}}}
            network: {{network_id: {NETWORK}, genesis: genesis.yaml, bootstrap: BOOT}}
            gateway: {{port: 0, enabled: {str(gateway).lower()}}}
            membership: {{heartbeat_interval: 0.3, suspect_timeout: 1.5, peer_timeout: 3.0}}
            """))
        return path

    honest = [config(f"n{k}", f"n{k}.key", low=k == 0, gateway=True) for k in range(N)]
    return honest, config("attacker", "attacker.key", low=False, gateway=False)


def with_bootstrap(path: Path, boot: list[str]) -> Path:
    out = path.with_suffix(".run.yaml")
    out.write_text(path.read_text().replace("BOOT", json.dumps(boot)))
    return out


async def get(client: openai.AsyncOpenAI, node: dict[str, Any], what: str) -> dict[str, Any]:
    got = await client.get(node["gateway"] + what, cast_to=object)
    assert isinstance(got, dict)
    return got


def rss(proc: ChildProcess) -> int:
    """The process's resident memory in bytes."""
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def raw_stream(overlay: Libp2pOverlay, peer: str, protocol: str, writes: list[bytes],
                     hold: float) -> None:
    """Open a ``protocol`` stream to ``peer``, write ``writes`` and keep it open ``hold`` s."""
    try:
        stream = await overlay.host.new_stream(ID.from_base58(peer), [TProtocol(protocol)])
        for data in writes:
            await stream.write(data)
        await trio.sleep(hold)
    except Exception:  # the victim resets the stream or drops the connection: that is fine
        pass


# ---- what the attacker does beside the shared strategies ----------------------------------
async def six_bytes(targets: list[Target]) -> None:
    """Item 1: a length of 5, then 0xFF five times, on /meshsub/1.1.0, to every node."""
    for target in targets:
        async with Libp2pOverlay(Identity.generate()) as stranger:
            await stranger.connect(target.address)
            await raw_stream(stranger, target.peer_id, "/meshsub/1.1.0",
                             [b"\x05" + b"\xff" * 5], hold=0.2)


async def big_side_blocks(attacker: Node, rng: random.Random, count: int) -> None:
    """Item 4: side blocks of ~400 KiB signed by keys without stake."""
    ledger = attacker.ledger
    assert ledger is not None
    chain = ledger.chain
    for _ in range(count):
        height = rng.randint(1, max(1, chain.height))
        parent = chain.canonical_id(height - 1)
        assert parent is not None
        block = make_block(Identity.generate(), network=NETWORK, height=height, parent=parent,
                           slot=chain.tip_slot, txs=[], state_root=rng.randbytes(32),
                           evidence=(rng.randbytes(400 * 1024),))
        await attacker.overlay.publish(block_topic(NETWORK), encode(block))
        await trio.sleep(0.1)


async def pool_flood(attacker: Node, rng: random.Random, count: int) -> None:
    """Item 5: payments that cannot apply: free keys, far nonces, spending past the balance."""
    ledger = attacker.ledger
    assert ledger is not None
    for i in range(count):
        if i % 2:
            payer, nonce, amount = Identity.generate(), 0, UNIT
        else:
            payer = attacker.identity
            nonce = ledger.chain.state.nonce(attacker.peer_id) + rng.randint(64, 1024)
            amount = 10**6 * UNIT
        tx = Payment(network=NETWORK, payer=payer.peer_id, payee=attacker.peer_id,
                     amount=amount, request_id=f"flood{i}", nonce=nonce)
        await attacker.overlay.publish(tx_topic(NETWORK), sign_tx(tx, payer).envelope)
        if i % 50 == 49:
            await trio.sleep(0.05)


async def strangers_ask(targets: list[Target]) -> dict[str, int]:
    """Items 6 and 7: strangers without an account offer work and ask for judgements."""
    got = {"accepted": 0, "refused": 0, "judged": 0, "judge_refused": 0}
    for k, target in enumerate(targets):
        async with Libp2pOverlay(Identity.generate()) as stranger:
            await stranger.connect(target.address)
            for i in range(4):
                request = CompletionRequest(request_id=f"free{k}.{i}", prompt="free?",
                                            model=MODEL, max_tokens=2000, timeout=30.0)
                payload = encode(Offload(request=encode(request), offer=True))
                with trio.fail_after(10):
                    async with stranger.request(target.peer_id, OFFLOAD_PROTOCOL, payload,
                                                idle_timeout=10.0) as resp:
                        first = decode(await resp.__anext__(), expect=ProbeReply)
                got["accepted" if first.accept else "refused"] += 1
            # a well-formed duel record that names this node as a judge
            record = DuelRecord(network=NETWORK, duel_id=f"fake{k}", requester=stranger.peer_id,
                                executors=(Identity.generate().peer_id,
                                           Identity.generate().peer_id),
                                answers=(digest("a"), digest("b")), judges=(target.peer_id,),
                                x_first=(True,), anchor=0)
            ask = encode(JudgeRequest(record=encode(seal(record, stranger.identity)),
                                      question="q", answer_a="a", answer_b="b"))
            try:
                with trio.fail_after(10):
                    async with stranger.request(target.peer_id, JUDGE_PROTOCOL, ask,
                                                idle_timeout=10.0) as resp:
                        async for _ in resp:
                            pass
                got["judged"] += 1
            except (OverlayError, ProtocolError):
                got["judge_refused"] += 1
    return got


async def unfinished_frames(target: Target, identities: int, streams: int,
                            size: int, hold: float) -> None:
    """Item 8: from each of ``identities`` strangers, ``streams`` mux streams that each
    announce a 4 MiB frame, send ``size`` bytes of it and then nothing."""
    header = struct.pack(">I", 4 * MiB - 8)
    async with trio.open_nursery() as nursery:
        for _ in range(identities):
            async def one() -> None:
                async with Libp2pOverlay(Identity.generate()) as stranger:
                    await stranger.connect(target.address)
                    async with trio.open_nursery() as inner:
                        for _ in range(streams):
                            inner.start_soon(raw_stream, stranger, target.peer_id,
                                             MUX_PROTOCOL, [header, b"O" + bytes(size)], hold)
            nursery.start_soon(one)


async def users_reuse_ids(gateway: str, pairs: int) -> int:
    """Item 9: pairs of user requests sharing one ``X-Request-Id``; returns how many ended."""
    done = 0
    async with openai.AsyncOpenAI(base_url=gateway + "/v1", api_key="x", max_retries=0,
                                  timeout=60) as users:
        async def one(i: int) -> None:
            nonlocal done
            r = await users.completions.create(
                model=MODEL, prompt="z" * 2000, max_tokens=60,
                extra_body={"ignore_eos": True},
                extra_headers={"X-Request-Id": f"same-{i // 2}"})
            assert r.usage is not None and r.usage.completion_tokens == 60
            done += 1

        async with trio.open_nursery() as nursery:
            for i in range(2 * pairs):
                nursery.start_soon(one, i)
                await trio.sleep(0.1)
    return done


async def test_a_red_team_cannot_crash_rob_split_or_fill_honest_nodes(tmp_path: Path) -> None:
    honest_configs, attacker_config = write_configs(tmp_path)
    procs: list[ChildProcess] = []
    client = openai.AsyncOpenAI(base_url="http://127.0.0.1:1/v1", api_key="x", max_retries=0,
                                timeout=60)
    rng = random.Random(21)
    async with trio.open_nursery() as nursery:
        try:
            nodes: list[dict[str, Any]] = []
            boot: list[str] = []
            for k in range(N):
                procs.append(ChildProcess(["node", "--json-events",
                                           str(with_bootstrap(honest_configs[k], boot))]))
                nodes.append(await procs[-1].start(nursery))
                boot = boot or [nodes[0]["addresses"][0]]
            async with Node(load_config(with_bootstrap(attacker_config, boot)),
                            rng=random.Random(7)) as attacker:
                honest_ids = await attack(client, nodes, procs, attacker, rng,
                                          tmp_path / "data")
            # every honest stake loss on the best chain is earned; the equivocator paid
            for p in procs:
                await p.stop()
            chain = Chain(Genesis.load(tmp_path / "genesis.yaml"))
            replay(chain, BlockStore(tmp_path / "data" / "n1" / "blocks"))
            problems: list[str] = []
            slashed = check_honest_stakes(chain, honest_ids, problems)
            assert not problems
            assert slashed == {attacker.peer_id}
            assert chain.state.burned > 0
        finally:
            await client.close()
            for p in reversed(procs):
                await p.stop()
            nursery.cancel_scope.cancel()


async def attack(client: openai.AsyncOpenAI, nodes: list[dict[str, Any]],
                 procs: list[ChildProcess], attacker: Node, rng: random.Random,
                 data: Path) -> set[str]:
    """Everything at once against the running ``nodes``; checks what their gateways show
    and returns the honest peer ids."""
    honest_ids = {n["peer_id"] for n in nodes}
    with trio.fail_after(30):
        while not honest_ids <= set(attacker.peers):
            await trio.sleep(0.2)
    await wait_until(lambda: all(attacker.peers[p].models for p in honest_ids), within=30,
                     what="the attacker knows the honest nodes' models")
    targets = [Target(n["peer_id"], n["addresses"][0]) for n in nodes]
    start_height = (await get(client, nodes[1], "/ledger"))["height"]

    await six_bytes(targets)
    assert all(p.running for p in procs)

    victim = procs[1]
    rss_before = rss_peak = rss(victim)
    asked: dict[str, int] = {}
    served = 0

    async def watch_memory() -> None:
        nonlocal rss_peak
        while True:
            rss_peak = max(rss_peak, rss(victim))
            await trio.sleep(0.2)

    async def ask() -> None:
        asked.update(await strangers_ask(targets[1:]))

    async def users() -> None:
        nonlocal served
        served = await users_reuse_ids(nodes[0]["gateway"], 8)

    async with trio.open_nursery() as attacks:
        attacks.start_soon(watch_memory)
        async with trio.open_nursery() as timed:
            timed.start_soon(lambda: play(attacker, STRATEGIES, targets=targets, rng=rng,
                                          duration=ATTACK_SECONDS, stranger=Libp2pOverlay))
            timed.start_soon(big_side_blocks, attacker, rng, 30)
            timed.start_soon(pool_flood, attacker, rng, 1000)
            timed.start_soon(ask)
            timed.start_soon(unfinished_frames, targets[1], 16, 6, 3 * MiB, 8.0)
            timed.start_soon(users)
        attacks.cancel_scope.cancel()

    # 1. nobody crashed
    assert all(p.running for p in procs), "an honest node died"
    # 6/7. strangers were served nothing, judged nothing
    assert asked == {"accepted": 0, "refused": 12, "judged": 0, "judge_refused": 3}, asked
    # 9. every user request was served, duplicates and all
    assert served == 16
    # 8. 96 streams were to hold 3 MiB each (288 MiB): at most 4 per identity were kept and
    # together they held at most the receive budget (64 MiB); ~112 MiB of growth measured
    # with everything else this test throws at the same process
    assert rss_peak - rss_before < 160 * MiB, (rss_before, rss_peak)

    # 3. one chain again, and finality moves
    async def agree(within: float) -> list[dict[str, Any]]:
        with trio.fail_after(within):
            while True:
                ledgers = [await get(client, n, "/ledger") for n in nodes]
                if len({(lg["tip"], lg["state_root"]) for lg in ledgers}) == 1:
                    return ledgers
                await trio.sleep(0.5)

    final = (await agree(60))[0]["finalized_height"]
    with trio.fail_after(30):
        while (await get(client, nodes[2], "/ledger"))["finalized_height"] < final + 2:
            await trio.sleep(0.5)
    ledgers = await agree(60)
    assert ledgers[0]["height"] > start_height + ATTACK_SECONDS / 2
    # 2. the equivocation's evidence lands in a block (the twins' last slot may be late)
    with trio.fail_after(30):
        while (await get(client, nodes[2], "/ledger"))["offences_slashed"] < 1:
            await trio.sleep(0.5)

    # 4. the block files hold the best chain, not 12 MiB of side blocks
    for k in range(N):
        size = (data / f"n{k}" / "blocks").stat().st_size
        assert size < 4 * MiB, (k, size)
    # 5/9. n0's payments applied through the flood, none stuck behind a duplicate
    paid = (await get(client, nodes[0], "/status"))["dispatch"].get("payments_submitted", 0)
    assert paid > 0
    me = nodes[0]["peer_id"]
    with trio.fail_after(40):
        while True:
            view = await get(client, nodes[0], "/ledger")
            if {a["account"]: a["nonce"] for a in view["accounts"]}[me] >= paid:
                break
            await trio.sleep(0.5)
    assert view["pending"] < 100  # the flood's thousand never entered the pool
    # lying heartbeats reached no peer table
    for n in nodes:
        for peer in (await get(client, n, "/status"))["peers"]:
            assert peer["peer_id"] in honest_ids | {attacker.peer_id}
            assert peer["credit"] >= 0 and peer["stake"] < 1e15
    return honest_ids
