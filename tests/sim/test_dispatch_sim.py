"""Dispatch in virtual time: 4 nodes over MemoryOverlay with simulated engines."""

from __future__ import annotations

import dataclasses
import math
import random
from contextlib import asynccontextmanager

import pytest
import trio

from wwwserve.config import (
    DispatchParams,
    MembershipParams,
)
from wwwserve.engines import Chunk, CompletionRequest, Engine, Scraped, SimEngine
from wwwserve.errors import (
    ClosedError,
    DeadlineExceededError,
    EngineError,
    ModelNotFoundError,
    StreamBrokenError,
)
from wwwserve.market import weighted_sample
from wwwserve.node import Node

MODEL = "Qwen/Qwen3-8B"
ONE_WAY = 0.002  # the network's link latency
PARAMS = MembershipParams(heartbeat_interval=1.0, suspect_timeout=2.5, peer_timeout=5.0)


def request(i: int, out: int = 200, **kw) -> CompletionRequest:
    return CompletionRequest(request_id=f"r{i}", model=MODEL, prompt="x" * 2000,
                             max_tokens=out, ignore_eos=True, **kw)


@asynccontextmanager
async def network(memory_testnet, accept: list[float], *, seed: int = 1,
                  stake: list[float] | None = None, profile: str = "rtx4090/qwen3-8b",
                  credits: list[float] | None = None):
    """Nodes with one simulated engine each, a shared credit book, virtual time."""
    async with memory_testnet(len(accept), accept_frequency=accept, seed=seed, stake=stake,
                              profile=profile, credit=credits or 100.0,
                              target_token_usage=0.6, latency=ONE_WAY) as net:
        assert all(len(n.peers) == len(accept) - 1 for n in net.nodes)
        yield net.nodes, net.engines, net.book, net.network


async def burst(node: Node, n: int, **kw) -> list[str]:
    texts: list[str] = []

    async def one(i: int) -> None:
        text, usage = await node.complete(request(i, **kw))
        assert usage.completion_tokens == kw.get("out", 200)
        texts.append(text)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return texts


async def test_overloaded_node_offloads_and_credits_move_by_served_count(memory_testnet,
                                                                         autojump_clock):
    async with network(memory_testnet, [0.0, 1.0, 1.0, 1.0]) as (nodes, engines, book, _net):
        total = book.total()
        busy = nodes[0]
        credit0 = busy.credit.balance() + busy.credit.stake()
        texts = await burst(busy, 40)
        assert len(texts) == 40
        offloaded = busy.dispatcher.stats["offloaded"]
        accepted = sum(n.dispatcher.stats["accepted"] for n in nodes[1:])
        assert offloaded > 0 and offloaded == accepted
        assert busy.dispatcher.stats["local"] + offloaded == 40
        # exactly one credit per offloaded request left the busy node, none was created
        assert busy.credit.balance() + busy.credit.stake() == pytest.approx(credit0 - offloaded)
        assert len(book.settled) == offloaded
        assert book.total() == pytest.approx(total)
        assert sum(e.completed for e in engines) == 40


async def test_a_node_without_credit_serves_its_users_itself(memory_testnet, autojump_clock):
    async with network(memory_testnet, [0.0, 1.0, 1.0, 1.0],
                       credits=[0.0, 100.0, 100.0, 100.0]) as (nodes, engines, book, _net):
        broke = nodes[0]
        texts = await burst(broke, 20)
        assert len(texts) == 20
        assert broke.dispatcher.stats["offloaded"] == 0
        assert broke.dispatcher.stats["local"] == 20
        assert broke.dispatcher.stats["queued"] > 0  # it was busy, and queued instead
        assert broke.credit.balance() == 0.0 and not book.settled
        assert engines[0].completed == 20


async def test_zero_stake_and_zero_accept_peers_are_never_used(memory_testnet, autojump_clock):
    # node 2 stakes nothing (never drawn); node 3 never accepts (stakes nothing either)
    async with network(memory_testnet, [0.0, 1.0, 1.0, 0.0], stake=[0.0, 30.0, 0.0, 0.0]) as (
            nodes, engines, _book, _net):
        await burst(nodes[0], 40)
        assert engines[2].completed == 0
        assert engines[3].completed == 0
        assert nodes[3].dispatcher.stats["probe_accepted"] == 0
        assert nodes[1].dispatcher.stats["accepted"] > 0


async def test_executor_crash_mid_request_completes_elsewhere_billed_once(memory_testnet,
                                                                          autojump_clock):
    async with network(memory_testnet, [0.0, 1.0, 1.0, 1.0]) as (nodes, engines, book, net):
        busy = nodes[0]
        done: list[str] = []

        async def one(i: int) -> None:
            text, _ = await busy.complete(request(i, out=2000))
            done.append(text)

        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(one, i)
            await trio.sleep(10)  # executors are mid-way through 2000-token answers
            victim = max(range(1, 4), key=lambda k: engines[k].load().running)
            assert engines[victim].load().running > 0
            net.crash(nodes[victim].peer_id)
        assert len(done) == 30
        assert busy.dispatcher.stats["offload_failed"] > 0
        # every request billed at most once, and only to a node that completed it
        assert len(book.settled) == busy.dispatcher.stats["offloaded"]
        assert len(set(book.settled)) == len(book.settled)


async def test_unknown_model_is_404_and_deadline_is_504(memory_testnet, autojump_clock):
    async with network(memory_testnet, [0.0, 0.0]) as (nodes, _engines, _book, _net):
        with pytest.raises(ModelNotFoundError):
            await nodes[0].complete(CompletionRequest(request_id="x", model="nope", prompt="p"))
        # nobody accepts and the local queue is refused half the time: a tiny budget runs out
        with pytest.raises(DeadlineExceededError):
            await nodes[0].complete(request(99, out=5000, timeout=0.5))


async def test_streamed_chunks_arrive_in_order_from_a_peer(memory_testnet, autojump_clock):
    async with network(memory_testnet, [0.0, 1.0]) as (nodes, _engines, _book, _net):
        # fill the busy node so the next request goes to the peer
        chunks: list[Chunk] = []

        async def emit(c: Chunk) -> None:
            chunks.append(c)

        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(nodes[0].complete, request(i, out=500))
            await trio.sleep(0.5)
            await nodes[0].submit(request(100, out=64, stream=True), emit)
        assert sum(c.tokens for c in chunks) == 64
        assert nodes[1].dispatcher.stats["accepted"] >= 1
        # the first token at once, then every 8 (stream_interval): streamed, not one blob
        assert [c.tokens for c in chunks] == [1] + [8] * 7 + [7]
        assert chunks[-1].finish_reason == "length"
        assert all(c.finish_reason is None for c in chunks[:-1])


async def _ttft(submit, req: CompletionRequest) -> float:
    start = trio.current_time()
    first: list[float] = []

    async def emit(c: Chunk) -> None:
        if not first:
            first.append(trio.current_time())

    await submit(req, emit)
    return first[0] - start


async def test_an_accepted_offer_starts_one_round_trip_sooner_than_a_probe(memory_testnet,
                                                                           autojump_clock):
    async with network(memory_testnet, [0.0, 1.0]) as (nodes, engines, _book, _net):
        nodes[0].dispatcher.models[0].target_token_usage = -1.0  # never run locally
        offloaded = await _ttft(nodes[0].submit, request(1, out=64, stream=True))
        direct = await _ttft(engines[1].generate, request(2, out=64, stream=True))
        assert nodes[1].dispatcher.stats["accepted"] == 1
        # the request's way there and the first chunk's way back: one round trip, not two
        assert offloaded - direct == pytest.approx(2 * ONE_WAY)


async def test_a_refused_offer_falls_back_to_a_probed_peer(memory_testnet, autojump_clock):
    # node 1 stakes most, so it is offered nearly every request, but never accepts
    async with network(memory_testnet, [0.0, 0.0, 1.0], stake=[0.0, 90.0, 1.0]) as (
            nodes, engines, _book, _net):
        nodes[0].dispatcher.models[0].target_token_usage = -1.0
        ttfts = [await _ttft(nodes[0].submit, request(i, out=64, stream=True))
                 for i in range(5)]
        direct = await _ttft(engines[2].generate, request(9, out=64, stream=True))
        assert nodes[1].dispatcher.stats["probe_refused"] >= 4
        assert nodes[1].dispatcher.stats["accepted"] == 0
        assert nodes[2].dispatcher.stats["accepted"] == 5
        # refused offer and accepted probe in parallel, then the request: two round trips
        assert max(t - direct for t in ttfts) < 5 * ONE_WAY


def test_weighted_sample_is_proportional_and_skips_zero_weights():
    rng = random.Random(5)
    counts = {"a": 0, "b": 0, "z": 0}
    for _ in range(20_000):
        counts[weighted_sample({"a": 1.0, "b": 3.0, "z": 0.0}, 1, rng)[0]] += 1
    assert counts["z"] == 0
    assert 2.8 < counts["b"] / counts["a"] < 3.2
    assert sorted(weighted_sample({"a": 1, "b": 1, "c": 1}, 5, rng)) == ["a", "b", "c"]


async def test_requests_on_a_node_that_stops_end_with_closed_error(memory_testnet,
                                                                   autojump_clock):
    """The node stops while its users' requests are probing and offloading: each ends with
    ClosedError (documented), not an exception group out of the probe nurseries (DST seed
    184 found it)."""
    async with memory_testnet(4, accept_frequency=[0.0, 1.0, 1.0, 1.0],
                              target_token_usage=[0.0, 0.6, 0.6, 0.6], latency=0.02) as net:
        outcomes: list[str] = []

        async def one(i: int) -> None:
            try:
                await net.nodes[0].complete(request(i, out=2000, timeout=60.0))
                outcomes.append("ok")
            except ClosedError:
                outcomes.append("closed")

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, i)
                await trio.sleep(0.013)  # some probing, some streaming, when it stops
            net.network.crash(net.nodes[0].peer_id)
            net.stop_node(0)
        assert len(outcomes) == 20 and "closed" in outcomes


class _PausesAfterFirstChunk:
    """An engine whose answers stop for ``pause`` seconds after their first token while it
    stays healthy (an SGLang request retracted for KV and waiting to be prefilled again)."""

    def __init__(self, engine, pause: float) -> None:
        self.engine = engine
        self.pause = pause

    @property
    def models(self):
        return self.engine.models

    def load(self):
        return self.engine.load()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        await self.engine.run(task_status=task_status)

    async def generate(self, request, emit):
        first = True

        async def paused(chunk: Chunk) -> None:
            nonlocal first
            await emit(chunk)
            if first:
                first = False
                await self.pausing()

        return await self.engine.generate(request, paused)

    async def pausing(self) -> None:
        await trio.sleep(self.pause)


@pytest.mark.parametrize("keepalive", [True, False])
async def test_a_silent_but_healthy_executor_is_not_taken_for_a_dead_one(
        memory_testnet, autojump_clock, keepalive):
    """The executor's answer stops for 60 s (twice the requester's stall timeout) after its
    first token reached the user. Its keepalives carry the stream through; without them
    the requester gives up and the user's stream ends with an error."""
    def pausing(k: int, engine):
        return _PausesAfterFirstChunk(engine, 60.0) if k == 1 else engine

    silent = DispatchParams(keepalive_interval=math.inf)  # sends no keepalives
    async with memory_testnet(2, accept_frequency=[0.0, 1.0], target_token_usage=[0.0, 0.6],
                              latency=ONE_WAY, engine_wrapper=pausing,
                              dispatch=[DispatchParams(),
                                        DispatchParams() if keepalive else silent]) as net:
        requester = net.nodes[0]
        chunks: list[Chunk] = []

        async def emit(c: Chunk) -> None:
            chunks.append(c)

        r = request(1, out=100, stream=True, timeout=300)
        if keepalive:
            usage = await requester.submit(r, emit)
            assert usage.completion_tokens == 100 == sum(c.tokens for c in chunks)
            assert all(c.text or c.tokens for c in chunks)  # no keepalive reached the user
            assert requester.dispatcher.stats["offloaded"] == 1
            assert requester.dispatcher.stats["offload_failed"] == 0
        else:
            with pytest.raises(StreamBrokenError):
                await requester.submit(r, emit)
            assert requester.dispatcher.stats["offload_failed"] == 1
        assert net.engines[0].completed == 0  # it never ran on the requester


async def test_decode_speeds_are_measured_on_answers_and_give_the_speed_ratio(
        memory_testnet, autojump_clock):
    """A node on an RTX 3090 serves part of a burst itself and offloads the rest to an
    H100: it measures both, and sees the H100 answer it several times faster."""
    async with memory_testnet(2, profile=["rtx3090/qwen3-8b", "h100/qwen3-8b"],
                              accept_frequency=[0.0, 1.0], target_token_usage=0.6,
                              latency=ONE_WAY) as net:
        slow, fast = net.nodes
        assert slow.dispatcher.speed_ratio() == 1.0  # nothing measured yet
        await burst(slow, 12, out=300)
        d = slow.dispatcher
        assert d.stats["local"] > 0 and d.stats["offloaded"] > 0
        assert set(d.speeds) == {slow.peer_id, fast.peer_id}
        assert d.speed_ratio() == pytest.approx(d.speeds[fast.peer_id] / d.speeds[slow.peer_id])
        assert d.speed_ratio() > 2.0
        assert d.view(MODEL).speed_ratio == d.speed_ratio()
        assert d.speed_ratio("another/model") == 1.0  # no peer serving it was measured
        assert fast.dispatcher.speed_ratio() == 1.0  # never measured a faster peer


class _DownWhilePaused(_PausesAfterFirstChunk):
    """Pauses after the first token like its parent, and reports itself down meanwhile (a
    custom engine whose health check fails while a request on it is still alive)."""

    def __init__(self, engine, pause: float) -> None:
        super().__init__(engine, pause)
        self.down = False
        self.loads_while_down = 0

    def load(self):
        load = self.engine.load()
        if not self.down:
            return load
        self.loads_while_down += 1
        if self.loads_while_down > 10_000:
            raise AssertionError("the executor polls an engine that is down in a loop")
        return dataclasses.replace(load, healthy=False)

    async def pausing(self) -> None:
        self.down = True
        await super().pausing()
        self.down = False


async def test_an_executor_whose_engine_is_down_sends_no_keepalives_and_does_not_spin(
        memory_testnet, autojump_clock):
    """The executor's engine reports itself down for 20 s after the first token (longer
    than the keepalive interval, shorter than the requester's stall timeout). The
    keepalive task looks at it once an interval, not in a loop (which would also stop
    virtual time), and the answer completes when the engine is back."""
    engines: list[_DownWhilePaused] = []

    def flaky(k: int, engine):
        if k != 1:
            return engine
        engines.append(_DownWhilePaused(engine, 20.0))
        return engines[-1]

    async with memory_testnet(2, accept_frequency=[0.0, 1.0], target_token_usage=[0.0, 0.6],
                              latency=ONE_WAY, engine_wrapper=flaky) as net:
        requester, executor = net.nodes
        assert executor.dispatcher.params.keepalive_interval < 20.0 \
            < requester.dispatcher.params.stall_timeout
        chunks: list[Chunk] = []

        async def emit(c: Chunk) -> None:
            chunks.append(c)

        usage = await requester.submit(request(1, out=100, stream=True, timeout=300), emit)
        assert usage.completion_tokens == 100 == sum(c.tokens for c in chunks)
        assert requester.dispatcher.stats["offloaded"] == 1
        assert 0 < engines[0].loads_while_down < 1000


class _FailsAfterTheAnswer(_PausesAfterFirstChunk):
    """Streams a whole answer, then fails: the executor's stream ends in an error, not in
    the receipt and END that should follow its last chunk (the parent only delegates)."""

    async def generate(self, request, emit):
        await self.engine.generate(request, emit)
        raise EngineError("lost the engine after the answer")


@pytest.mark.parametrize("stream", [True, False])
async def test_a_stream_that_breaks_after_the_whole_answer_still_serves_it_once(
        memory_testnet, autojump_clock, caplog, stream):
    """The user has the whole answer when the executor's stream breaks: no error chunk
    after it, no second run elsewhere, and the answer is paid for once."""
    def failing(k: int, engine):
        return _FailsAfterTheAnswer(engine, 0.0) if k == 1 else engine

    async with memory_testnet(2, accept_frequency=[0.0, 1.0], target_token_usage=[0.0, 0.6],
                              latency=ONE_WAY, engine_wrapper=failing) as net:
        requester = net.nodes[0]
        chunks: list[Chunk] = []

        async def emit(c: Chunk) -> None:
            chunks.append(c)

        usage = await requester.submit(request(1, out=100, stream=stream, timeout=300), emit)
        assert usage.completion_tokens == 100 == sum(c.tokens for c in chunks)
        assert chunks[-1].finish_reason is not None
        d = requester.dispatcher
        assert (d.stats["offloaded"], d.stats["offload_failed"],
                d.stats["payments_submitted"]) == (1, 0, 1)
        assert net.book.settled and len(net.book.settled) == 1
        assert net.engines[1].completed == 1 and net.engines[0].completed == 0
        assert "broke its stream after a whole answer" in caplog.text


class _HangsAfterTheAnswer(_PausesAfterFirstChunk):
    """Streams a whole answer, then never returns: the executor sends neither its receipt
    nor the end of its stream (the parent only delegates)."""

    async def generate(self, request, emit):
        await self.engine.generate(request, emit)
        await trio.sleep_forever()


async def test_an_executor_silent_after_the_whole_answer_is_not_waited_for_long(
        memory_testnet, autojump_clock, caplog):
    """The requester waits for the receipt and END after a whole answer only briefly (the
    probe timeout), not as long as for an answer that stalled halfway."""
    def hanging(k: int, engine):
        return _HangsAfterTheAnswer(engine, 0.0) if k == 1 else engine

    async with memory_testnet(2, accept_frequency=[0.0, 1.0], target_token_usage=[0.0, 0.6],
                              latency=ONE_WAY, engine_wrapper=hanging) as net:
        requester = net.nodes[0]
        d = requester.dispatcher
        last: list[float] = []

        async def emit(c: Chunk) -> None:
            last.append(trio.current_time())

        usage = await requester.submit(request(1, out=100, stream=True, timeout=300), emit)
        waited = trio.current_time() - last[-1]
        assert usage.completion_tokens == 100
        params = d.params
        assert params.probe_timeout <= waited < params.probe_timeout + 1.0 \
            < params.keepalive_interval
        assert (d.stats["offloaded"], d.stats["offload_failed"],
                d.stats["payments_submitted"]) == (1, 0, 1)
        assert "did not end its stream after a whole answer" in caplog.text


@pytest.mark.parametrize("leave_at", ["third chunk", "last chunk"])
async def test_a_user_who_leaves_pays_only_for_an_answer_that_was_whole(
        autojump_clock, leave_at: str) -> None:
    """The payment rule of a cancelled offload: paid exactly when the last chunk (with its
    usage) reached the requester; a request abandoned before that is not paid, and its
    executor's engine stops at once."""
    from wwwserve.market import ServePeersOnly
    from wwwserve.testing import MemoryTestnet

    async with MemoryTestnet(2, seed=4, credit=100.0, policy_wrapper=lambda k, p: (
            ServePeersOnly(p, 1.0) if k == 0 else p)) as net:
        user, executor = net.nodes
        chunks: list[Chunk] = []

        async def emit(chunk: Chunk) -> None:
            chunks.append(chunk)
            if (leave_at == "third chunk" and len(chunks) == 3) or \
                    (leave_at == "last chunk" and chunk.finish_reason is not None):
                scope.cancel()

        with trio.CancelScope() as scope:
            await user.dispatcher.submit(request(1, out=400, stream=True), emit)
        assert scope.cancelled_caught
        await trio.sleep(1.0)
        engine = net.engines[1]
        assert engine.load().running == 0
        whole = leave_at == "last chunk"
        assert engine.aborted == (0 if whole else 1)
        assert user.dispatcher.stats["payments_submitted"] == (1 if whole else 0)
        assert user.credit.balance() + user.credit.stake() == \
            pytest.approx(100.0 - (1.0 if whole else 0.0))
        assert executor.credit.balance() + executor.credit.stake() == \
            pytest.approx(100.0 + (1.0 if whole else 0.0))


@pytest.mark.parametrize("count_admitted", [True, False])
async def test_a_burst_between_two_load_readings_does_not_all_land_here(
        memory_testnet, autojump_clock, count_admitted: bool) -> None:
    """30 requests at once at a node whose engine's load is read every 0.5 s, as a real
    engine's /metrics are: on the reading alone (the authors' rule) all 30 ran here on a
    slow engine, while three idle peers waited; counting what was admitted since the
    reading runs a few here and offloads the rest."""
    def scraped(k: int, engine: SimEngine) -> Engine:
        return Scraped(engine, 0.5)

    async with memory_testnet(4, accept_frequency=[0.0, 1.0, 1.0, 1.0],
                              profile=["rtx3090/qwen3-8b"] + ["h100/qwen3-8b"] * 3,
                              target_token_usage=0.6, queue_frequency=1.0, latency=ONE_WAY,
                              engine_wrapper=scraped) as net:
        for node in net.nodes:
            for model in node.dispatcher.models:
                model.count_admitted = count_admitted
        await trio.sleep(1.0)  # a reading of the idle engines
        texts = await burst(net.nodes[0], 30)
        assert len(texts) == 30
        stats = net.nodes[0].dispatcher.stats
        assert stats["local"] + stats["offloaded"] == 30
        if count_admitted:
            assert stats["offloaded"] >= 18, dict(stats)
            # nor did every offload land on the first peer drawn: each counts its own
            assert sum(1 for n in net.nodes[1:] if n.dispatcher.stats["accepted"]) >= 2
        else:
            assert stats["local"] == 30, dict(stats)
