"""The market's parts on their own, without a network: stake-weighted draws, the credit
book, claimed-model checks, grants, speed metering, and the dispatcher's two roles driven
through fakes."""

from __future__ import annotations

import math
import random
from collections import Counter
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from wwwserve.config import DispatchParams, ServerParams
from wwwserve.engines import Chunk, CompletionRequest, Emit, EngineLoad, Usage
from wwwserve.errors import (
    DeadlineExceededError,
    ModelNotFoundError,
    NoCapacityError,
    PeerUnavailableError,
    WWWServeError,
)
from wwwserve.market import CreditBook, DefaultPolicy, Dispatcher, LocalModel
from wwwserve.market.claims import DEMOTE_SECONDS, UNPROVEN_REFUSALS, Claims
from wwwserve.market.executor import Grants
from wwwserve.market.messages import OFFLOAD_PROTOCOL, Offload, Probe, ProbeReply
from wwwserve.market.speed import SPEED_MIN_TOKENS, Meter, SpeedBook
from wwwserve.sampling import weighted_sample
from wwwserve.wire import decode, encode


# ---- stake-weighted draws ----------------------------------------------------------------
def test_a_draw_is_distinct_capped_and_skips_weightless_keys() -> None:
    weights = {"a": 1.0, "b": 2.0, "c": 0.0, "d": -1.0, "e": math.inf, "f": math.nan}
    for seed in range(50):
        drawn = weighted_sample(weights, 5, random.Random(seed))
        assert sorted(drawn) == ["a", "b"]
    assert len(weighted_sample({str(i): 1.0 for i in range(10)}, 3, random.Random(0))) == 3
    assert weighted_sample({}, 3, random.Random(0)) == []


def test_a_draw_is_the_same_for_a_seed_whatever_the_mapping_order() -> None:
    a = {"x": 1.0, "y": 5.0, "z": 2.0}
    b = dict(reversed(list(a.items())))
    assert weighted_sample(a, 2, random.Random(7)) == weighted_sample(b, 2, random.Random(7))


def test_the_first_pick_follows_stake() -> None:
    rng = random.Random(1)
    firsts = Counter(weighted_sample({"small": 1.0, "big": 3.0}, 1, rng)[0]
                     for _ in range(4000))
    assert firsts["big"] / 4000 == pytest.approx(0.75, abs=0.03)


# ---- the credit book ---------------------------------------------------------------------
def test_a_payment_settles_once_and_never_overdraws() -> None:
    book = CreditBook(shared=True)
    alice, bob = book.open("alice", 10.0), book.open("bob", 0.0)
    total = book.total()
    assert alice.pay("bob", 4.0, "r1")
    assert not alice.pay("bob", 4.0, "r1")  # the same request id: paid already
    assert not alice.pay("bob", 7.0, "r2")  # more than the balance
    assert not alice.pay("bob", -1.0, "r3")
    assert (alice.balance(), bob.balance(), book.total()) == (6.0, 4.0, total)
    assert not bob.earn("alice", 1.0, "r4")  # a shared book counts each payment once


def test_a_stake_is_clamped_to_what_the_account_holds() -> None:
    account = CreditBook().open("a", 10.0)
    assert account.set_stake(4.0) == 4.0 and (account.balance(), account.stake()) == (6.0, 4.0)
    assert account.set_stake(50.0) == 10.0 and account.balance() == 0.0
    assert account.set_stake(-3.0) == 0.0 and account.balance() == 10.0


def test_a_nodes_own_book_records_only_its_side() -> None:
    mine = CreditBook().open("me", 5.0)
    assert mine.earn("stranger", 2.0, "r1") and mine.balance() == 7.0
    assert mine.pay("stranger", 7.0, "r2") and mine.balance() == 0.0


# ---- claimed models ------------------------------------------------------------------------
def test_a_peer_that_says_it_does_not_serve_a_model_is_demoted_for_a_while() -> None:
    stats: Counter[str] = Counter()
    claims = Claims(stats)
    claims.refused("p", "m", "model", now=100.0)
    assert claims.demoted("p", "m", 100.0) and not claims.demoted("p", "other", 100.0)
    assert claims.demoted("p", "m", 100.0 + DEMOTE_SECONDS - 0.1)
    assert not claims.demoted("p", "m", 100.0 + DEMOTE_SECONDS)
    assert stats["model_demoted"] == 1


def test_refusals_demote_only_a_peer_that_never_served_the_model() -> None:
    claims = Claims(Counter())
    for _ in range(UNPROVEN_REFUSALS - 1):
        claims.refused("liar", "m", "busy", 0.0)
        claims.refused("slow", "m", None, 0.0)
    assert not claims.demoted("liar", "m", 0.0)
    claims.refused("liar", "m", "busy", 0.0)
    assert claims.demoted("liar", "m", 0.0)
    claims.accepted("slow", "m")  # proven once: never demoted for being busy or silent
    for _ in range(10 * UNPROVEN_REFUSALS):
        claims.refused("slow", "m", "busy", 0.0)
        claims.refused("slow", "m", None, 0.0)
    assert not claims.demoted("slow", "m", 0.0)
    claims.refused("any", "auto", "model", 0.0)  # "auto" names no model
    assert not claims.demoted("any", "auto", 0.0)


def test_claim_tables_are_bounded() -> None:
    claims = Claims(Counter())
    for i in range(10_000):
        claims.accepted(f"p{i}", "m")
        claims.refused(f"q{i}", "m", "model", 0.0)
        claims.refused(f"r{i}", "m", "busy", 0.0)
    assert max(len(claims._proven), len(claims._no_model), len(claims._unproven)) <= 4097


# ---- grants --------------------------------------------------------------------------------
def test_a_grant_is_used_once_before_it_expires() -> None:
    grants = Grants(ttl=30.0)
    grants.grant("p", "r", now=0.0, model="m")
    assert grants.take("q", "r", 1.0) is None  # another peer's
    assert grants.take("p", "r", 1.0) == "m" and grants.take("p", "r", 1.0) is None
    grants.grant("p", "s", now=0.0)
    assert grants.take("p", "s", 30.0) is None


def test_grants_are_bounded_and_drop_expired_ones_first() -> None:
    grants = Grants(ttl=1.0, limit=8)
    for i in range(8):
        grants.grant("p", f"old{i}", now=0.0)
    grants.grant("p", "new", now=5.0)  # the expired ones go
    assert len(grants) == 1
    for i in range(20):
        grants.grant("p", f"live{i}", now=5.0)
    assert len(grants) <= 8 and grants.take("p", "live19", 5.5) is not None


# ---- speed -------------------------------------------------------------------------------
def test_a_meter_times_tokens_after_the_first() -> None:
    meter = Meter()
    for i in range(SPEED_MIN_TOKENS + 1):
        meter.note(Chunk(text="x", tokens=1), now=10.0 + i * 0.1)
    meter.note(Chunk(text=""), now=99.0)  # no tokens: not timed
    assert meter.speed() == pytest.approx(SPEED_MIN_TOKENS / (SPEED_MIN_TOKENS * 0.1))
    short = Meter()
    for i in range(SPEED_MIN_TOKENS - 1):
        short.note(Chunk(text="x", tokens=1), now=float(i))
    assert short.speed() is None


def test_speeds_average_and_the_ratio_counts_only_live_peers() -> None:
    def answered(speed: float) -> Meter:
        m = Meter()
        for i in range(41):
            m.note(Chunk(text="x", tokens=1), now=i / speed)
        return m

    book = SpeedBook("me")
    assert book.ratio(lambda p: True) == 1.0  # our own engine unmeasured
    book.measured("me", answered(10.0))
    book.measured("fast", answered(40.0))
    book.measured("faster", answered(80.0))
    assert book.ratio(lambda p: True) == pytest.approx(8.0)
    assert book.ratio(lambda p: p == "fast") == pytest.approx(4.0)
    assert book.ratio(lambda p: False) == 1.0
    book.measured("fast", answered(20.0))  # a moving average, not the latest
    assert book.speeds["fast"] == pytest.approx(40.0 + 0.2 * (20.0 - 40.0))


# ---- the dispatcher through fakes ------------------------------------------------------------
class FakeEngine:
    """Answers ``tokens`` tokens, one per 10 ms; ``usage`` is its reported KV use."""

    def __init__(self, usage: float = 0.0, tokens: int = 40, healthy: bool = True) -> None:
        self.models = ("m",)
        self.usage, self.tokens, self.healthy = usage, tokens, healthy
        self.calls = 0

    def load(self) -> EngineLoad:
        return EngineLoad(token_usage=self.usage, healthy=self.healthy)

    async def generate(self, request: CompletionRequest, emit: Emit) -> Usage:
        self.calls += 1
        for i in range(self.tokens):
            await trio.sleep(0.01)
            last = i == self.tokens - 1
            await emit(Chunk(text="t", tokens=1, finish_reason="stop" if last else None,
                             usage=Usage(completion_tokens=self.tokens) if last else None))
        return Usage(completion_tokens=self.tokens)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()


class NoNetwork:
    """An overlay with no peers: handlers are kept, every request fails."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def serve(self, protocol: str, handler: Any) -> None:
        self.handlers[protocol] = handler

    @asynccontextmanager
    async def request(self, peer: str, protocol: str, payload: bytes, **kw: Any) -> Any:
        raise PeerUnavailableError(f"no network to reach {peer}")
        yield  # pragma: no cover


class Sender:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, chunk: bytes) -> None:
        self.sent.append(chunk)


def dispatcher(engine: FakeEngine | None = None, *, accept: float = 1.0, offload: float = 0.0,
               queue: float = 0.0, **params: Any) -> Dispatcher:
    models = [LocalModel("m", engine, 0.5)] if engine is not None else []
    policy = DefaultPolicy(ServerParams(accept_frequency=accept, offload_frequency=offload,
                                        queue_frequency=queue))
    return Dispatcher(overlay=NoNetwork(), peer_id="me", peers=dict, models=models,  # type: ignore[arg-type]
                      policy=policy, credit=CreditBook().open("me", 100.0),
                      rng=random.Random(0), params=DispatchParams(**params), id_prefix="t")


def request(model: str = "m", timeout: float = 5.0, rid: str = "r1") -> CompletionRequest:
    return CompletionRequest(request_id=rid, model=model, prompt="hi", max_tokens=40,
                             timeout=timeout)


async def collect(d: Dispatcher, req: CompletionRequest) -> tuple[str, Usage]:
    chunks: list[Chunk] = []

    async def emit(c: Chunk) -> None:
        chunks.append(c)

    usage = await d.submit(req, emit)
    return "".join(c.text for c in chunks), usage


async def test_a_request_under_target_runs_here_and_meters_our_engine(autojump_clock) -> None:
    engine = FakeEngine(usage=0.1)
    d = dispatcher(engine)
    text, usage = await collect(d, request())
    assert text == "t" * 40 and usage.completion_tokens == 40
    assert d.stats["local"] == 1 and engine.calls == 1
    assert d.speeds["me"] == pytest.approx(39 / 0.39, rel=0.01)


async def test_a_busy_node_that_may_not_offload_or_queue_waits_to_its_deadline(
        autojump_clock) -> None:
    d = dispatcher(FakeEngine(usage=0.9))
    start = trio.current_time()
    with pytest.raises(DeadlineExceededError):
        await collect(d, request(timeout=3.0))
    assert trio.current_time() - start == pytest.approx(3.0)
    assert d.stats["deadline"] == 1 and d.stats["deferred"] >= 1


async def test_a_busy_node_queues_when_its_policy_says_so(autojump_clock) -> None:
    d = dispatcher(FakeEngine(usage=0.9), queue=1.0)
    await collect(d, request())
    assert (d.stats["queued"], d.stats["local"]) == (1, 1)


async def test_requests_for_no_served_model_or_without_capacity_fail_at_once(
        autojump_clock) -> None:
    with pytest.raises(ModelNotFoundError):
        await collect(dispatcher(FakeEngine()), request(model="ghost"))
    down = dispatcher(FakeEngine(healthy=False))
    with pytest.raises(NoCapacityError):
        await collect(down, request())
    assert down.stats["no_capacity"] == 1


async def test_an_offload_with_nobody_to_take_it_falls_back_to_local(autojump_clock) -> None:
    d = dispatcher(FakeEngine(usage=0.9), offload=1.0, queue=1.0)
    await collect(d, request())
    assert (d.stats["no_candidates"], d.stats["local"]) == (1, 1)


async def test_the_executor_answers_probes_from_its_policy_and_grants_them(
        autojump_clock) -> None:
    d = dispatcher(FakeEngine(usage=0.1))
    d.executor.serve()
    on_probe = d.executor.overlay.handlers["/wwwserve/probe/1.0.0"]  # type: ignore[attr-defined]

    async def probe(model: str, rid: str) -> ProbeReply:
        sender = Sender()
        await on_probe("peer", encode(Probe(request_id=rid, model=model, prompt_tokens=1,
                                            max_tokens=1)), sender)
        reply: ProbeReply = decode(sender.sent[0], expect=ProbeReply)
        return reply

    assert await probe("ghost", "g") == ProbeReply(accept=False, reason="model")
    assert await probe("m", "r") == ProbeReply(accept=True, model="m")
    assert d.executor.grants.take("peer", "r", trio.current_time()) == "m"
    busy = dispatcher(FakeEngine(usage=0.9))
    busy.executor.serve()
    handler = busy.executor.overlay.handlers["/wwwserve/probe/1.0.0"]  # type: ignore[attr-defined]
    sender = Sender()
    await handler("peer", encode(Probe(request_id="x", model="m", prompt_tokens=1,
                                       max_tokens=1)), sender)
    assert decode(sender.sent[0], expect=ProbeReply).reason == "busy"


async def test_the_executor_streams_an_offload_and_refuses_loops_and_floods(
        autojump_clock) -> None:
    d = dispatcher(FakeEngine(usage=0.1), max_peer_inflight=1)
    d.executor.serve()
    on_offload = d.executor.overlay.handlers[OFFLOAD_PROTOCOL]  # type: ignore[attr-defined]
    offload = encode(Offload(request=encode(request()), route=("peer",), hops=1, offer=True))
    sender = Sender()
    await on_offload("peer", offload, sender)
    frames = [decode(f) for f in sender.sent]
    assert frames[0] == ProbeReply(accept=True, model="m")
    assert "".join(f.text for f in frames[1:]) == "t" * 40
    assert d.stats["accepted"] == 1 and d.running_for_peers == 0
    with pytest.raises(WWWServeError, match="route loop"):
        await on_offload("peer", encode(Offload(request=encode(request()),
                                                route=("peer", "me"), hops=2)), Sender())
    # one running for this peer already: the next is refused as a flood
    refused = Sender()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_offload, "peer", offload, Sender())
        await trio.sleep(0.05)
        await on_offload("peer", offload, refused)
    assert decode(refused.sent[0], expect=ProbeReply) == ProbeReply(
        accept=False, reason="too many requests")
    assert d.stats["flood_refused"] == 1


# ---- admissions counted between load readings ------------------------------------------------
class Readings:
    """An engine whose load is one reading until :meth:`read` takes the next."""

    models = ("m",)

    def __init__(self) -> None:
        self.reading = EngineLoad()

    def read(self, **load: Any) -> None:
        self.reading = EngineLoad(**load)

    def load(self) -> EngineLoad:
        return self.reading


def test_admitted_requests_count_until_the_next_reading() -> None:
    engine = Readings()
    model = LocalModel("m", engine, target_token_usage=0.35)  # type: ignore[arg-type]
    tokens = [model.admit() for _ in range(3)]  # 0.1 each (no running request seen yet)
    assert model.load() == EngineLoad(token_usage=pytest.approx(0.3), running=3)
    tokens.append(model.admit())  # 0.3 < 0.35: one more runs, at 0.4 the next waits
    tokens.append(model.admit())
    assert (model.load().running, model.load().queued) == (4, 1)
    model.release(tokens[0])  # finished before any reading showed it
    assert (model.load().running, model.load().queued) == (3, 1)
    # a reading replaces the estimate, and teaches what a running request holds
    engine.read(token_usage=0.4, running=2)
    assert model.load() == EngineLoad(token_usage=0.4, running=2)
    model.release(tokens[1])  # counted by the reading now: nothing to take back
    assert model.load() == EngineLoad(token_usage=0.4, running=2)
    waiting = model.admit()  # over the target: it waits
    assert (model.load().running, model.load().queued) == (2, 1)
    model.release(waiting)
    model.target_token_usage = 0.9
    model.admit()  # under it: it runs, holding the mean of the prior and what was read
    assert model.load().token_usage == pytest.approx(0.4 + (0.1 + 0.2) / 2)


def test_the_authors_rule_decides_on_the_reading_alone() -> None:
    engine = Readings()
    model = LocalModel("m", engine, count_admitted=False)  # type: ignore[arg-type]
    for _ in range(30):
        model.admit()
    assert model.load() == EngineLoad()
