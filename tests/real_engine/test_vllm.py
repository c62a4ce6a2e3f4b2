"""The HTTP driver, a node's gateway and the offload path against a real vLLM (CPU build,
tiny random model, on loopback): what vLLM really sends, not what wwwserve's own engines
and hand-written samples say it sends."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import trio

from markets import OTHER, PARAMS, market
from recording_engine import MODEL
from vllm_server import SERVED, VLLMServer
from waiting import wait_until
from wwwserve.config import (
    DuelParams,
    GatewayParams,
    ModelConfig,
    NetworkParams,
    NodeConfig,
    ServerParams,
)
from wwwserve.engines import ChatMessage, Chunk, CompletionRequest, Engine, SimEngine, get_profile
from wwwserve.engines.http import HTTPEngine
from wwwserve.errors import BadRequestError, EngineUnavailableError
from wwwserve.identity import Identity
from wwwserve.market import CreditBook
from wwwserve.node import Node
from wwwserve.overlay import MemoryNetwork

pytestmark = pytest.mark.real_engine


@asynccontextmanager
async def driver(vllm: VLLMServer, **options: float) -> AsyncIterator[HTTPEngine]:
    """An HTTP driver for the real vLLM: its kind and its name found by asking it."""
    engine = HTTPEngine(vllm.url, MODEL, scrape_interval=0.1, **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        yield engine
        nursery.cancel_scope.cancel()


async def run(engine: HTTPEngine, request: CompletionRequest) -> tuple[list[Chunk], int]:
    chunks: list[Chunk] = []

    async def emit(chunk: Chunk) -> None:
        chunks.append(chunk)

    with trio.fail_after(60):
        usage = await engine.generate(request, emit)
    assert sum(c.tokens for c in chunks) == usage.completion_tokens
    return chunks, usage.completion_tokens


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("chat", [True, False])
async def test_the_driver_reads_vllm_and_counts_its_tokens(vllm: VLLMServer, chat: bool,
                                                           stream: bool) -> None:
    async with driver(vllm) as engine:
        assert (engine.kind, engine.served_model) == ("vllm", SERVED)
        assert engine.load().healthy
        request = CompletionRequest(
            request_id="r", model=MODEL, max_tokens=40, stream=stream, ignore_eos=True,
            **({"messages": (ChatMessage("user", "hello"),)} if chat else
               {"prompt": "def f(x):"}))
        chunks, generated = await run(engine, request)
        # the engine's own count, though a random model's tokens often decode to no text
        assert generated == 40
        assert chunks[-1].finish_reason == "length"
        assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0


async def test_a_too_long_prompt_is_the_users_error_not_the_engines(vllm: VLLMServer) -> None:
    async with driver(vllm) as engine:
        with pytest.raises(BadRequestError, match="maximum context length"):
            await run(engine, CompletionRequest(request_id="long", model=MODEL,
                                                prompt="word " * 3000, max_tokens=8))
        assert engine.load().healthy
        _, generated = await run(engine, CompletionRequest(
            request_id="next", model=MODEL, prompt="x", max_tokens=4, ignore_eos=True))
        assert generated == 4


async def test_load_rises_under_a_burst_and_returns_to_idle(vllm: VLLMServer) -> None:
    # whole answers, not 48 streams of events: parsing those starved this process's own
    # load scrapes on a 2-core machine (the readings are what is under test); and patient
    # scrapes: under the burst vLLM's own front end answers /metrics seconds late
    async with driver(vllm, unstreamed_max_tokens=1000, scrape_timeout=60) as engine:
        async def one(i: int) -> None:
            await run(engine, CompletionRequest(request_id=f"b{i}", model=MODEL,
                                                prompt=" ".join(str(j * i) for j in range(120)),
                                                max_tokens=600, ignore_eos=True))

        async def burst() -> None:
            async with trio.open_nursery() as requests:
                for i in range(48):
                    requests.start_soon(one, i)

        async def loaded() -> bool:
            try:
                load = await engine.scrape()
            except EngineUnavailableError:  # a busy vLLM's front end: read again
                return False
            # some running and some waiting: both gauges move (the pool seats ~3)
            return load.running >= 1 and load.queued >= 1 and load.running + load.queued >= 4

        with trio.fail_after(180):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(burst)
                # 48 requests of ~900 tokens each want 43,000 of the pool's 2,048 KV tokens
                # (~15 s of work): how many run at once varies (1 to 4 seen), but many wait
                await wait_until(loaded, within=60,
                                 what="a reading of the burst, some running and some waiting")

        def idle() -> bool:
            load = engine.load()
            return load.healthy and (load.running, load.queued) == (0, 0)

        await wait_until(idle, within=10, what="vLLM idle again after the burst")
        assert engine.load().token_usage < 0.05


@pytest.mark.parametrize("where", ["local", "offloaded"])
async def test_the_official_client_through_a_node_in_front_of_vllm(vllm: VLLMServer,
                                                                   where: str) -> None:
    """Served by the user's node, and offloaded over real libp2p from a node with a
    simulated engine to the node in front of vLLM."""
    async with market("libp2p", where, HTTPEngine(vllm.url, MODEL, scrape_interval=0.1)) as m:
        with trio.fail_after(60):
            answer = await m.client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=12,
                extra_body={"ignore_eos": True})
            assert answer.usage is not None and answer.usage.completion_tokens == 12
            assert answer.choices[0].finish_reason == "length"
            stream = await m.client.completions.create(
                model=MODEL, prompt="def g():", max_tokens=12, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            usage = None
            async for event in stream:
                usage = event.usage or usage
            assert usage is not None and usage.completion_tokens == 12
        if where == "offloaded":  # the node in front of vLLM ran both for its peer
            assert m.executor.dispatcher.stats["accepted"] == 2


async def test_seed_stop_and_logprobs_reach_vllm(vllm: VLLMServer) -> None:
    async with market("libp2p", "local", HTTPEngine(vllm.url, MODEL,
                                                    scrape_interval=0.1)) as m:
        ask = {"model": MODEL, "prompt": "import os\n", "max_tokens": 24, "temperature": 1.0,
               "seed": 7, "extra_body": {"ignore_eos": True}}
        with trio.fail_after(60):
            first = await m.client.completions.create(**ask)
            again = await m.client.completions.create(**ask)
            # vLLM's per-request seed: the same seed, the same sampled text
            assert first.choices[0].text == again.choices[0].text
            text = first.choices[0].text
            cut = next((i for i in range(3, len(text)) if text[i].strip()), None)
            if cut is not None:  # stop at a later character of what the seed gives
                stopped = await m.client.completions.create(
                    **{**ask, "extra_body": {}}, stop=[text[cut:cut + 1]])
                assert stopped.choices[0].finish_reason == "stop"
                assert text[cut:cut + 1] not in stopped.choices[0].text
            chat = await m.client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=6,
                logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
            content = chat.choices[0].logprobs and chat.choices[0].logprobs.content
            assert content and all(len(t.top_logprobs) == 2 for t in content)


async def test_response_format_reaches_vllm(vllm: VLLMServer) -> None:
    """A JSON schema through the node: vLLM's structured output makes even a random model
    answer with one of the schema's two values."""
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}},
              "required": ["answer"], "additionalProperties": False}
    async with market("libp2p", "local", HTTPEngine(vllm.url, MODEL,
                                                    scrape_interval=0.1)) as m:
        with trio.fail_after(60):
            answer = await m.client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "yes or no?"}],
                max_tokens=200, temperature=1.0, seed=3,
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "answer", "schema": schema}})
        content = answer.choices[0].message.content
        assert answer.choices[0].finish_reason == "stop", content
        assert json.loads(content or "") in ({"answer": "yes"}, {"answer": "no"})


async def test_a_user_who_goes_away_closes_the_nodes_request_to_vllm(
        vllm: VLLMServer) -> None:
    """A user who gives up while the request waits in vLLM's queue behind a burst: the
    node's driver closes its request to vLLM at once, and vLLM ends idle.

    (vLLM itself notices a closed stream only when it next writes to it; the tiny model
    then makes the rest of the tokens in a blink, so vLLM's own counts cannot tell.)
    """
    node_engine = HTTPEngine(vllm.url, MODEL, scrape_interval=0.1, scrape_timeout=60)
    async with market("libp2p", "local", node_engine) as m, \
            driver(vllm, unstreamed_max_tokens=1000, scrape_timeout=60) as burst:

        async def one(i: int) -> None:
            # long prompts: each holds a fifth of the KV pool, so the rest wait
            await run(burst, CompletionRequest(request_id=f"busy{i}", model=MODEL,
                                               prompt=" ".join(str(j * i) for j in range(150)),
                                               max_tokens=600, ignore_eos=True))

        async def user(scope: trio.CancelScope) -> None:
            with scope:
                async with httpx.AsyncClient(timeout=60) as client, client.stream(
                        "POST", f"{m.client.base_url}completions",
                        json={"model": MODEL, "prompt": "z", "max_tokens": 900,
                              "stream": True, "ignore_eos": True}) as resp:
                    body = b"".join([part async for part in resp.aiter_bytes()])
                raise AssertionError(f"the user's request ended before the user gave up: "
                                     f"{resp.status_code} {body[-300:]!r}")

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for i in range(24):
                    nursery.start_soon(one, i)
                # (the driver's own count, not a load reading: under a burst vLLM answers
                # /metrics late, and a busy CI machine made it later still)
                await wait_until(lambda: burst.in_flight == 24, within=30,
                                 what="the burst sent to vLLM, the user's request behind it")
                gone = trio.CancelScope()
                nursery.start_soon(user, gone)
                await wait_until(lambda: node_engine.in_flight == 1, within=10, every=0.01,
                                 what="the node sent the user's request to vLLM")
                gone.cancel()  # the user goes away (the connection closes)
                await wait_until(lambda: node_engine.in_flight == 0, within=5, every=0.01,
                                 what="the node's driver closed the user's request")
            await wait_until(lambda: (burst.load().queued, burst.load().running) == (0, 0),
                             within=10, what="vLLM idle after the burst")
        # cancelled, not served: a request that ran to its end would count as served here
        assert m.executor.dispatcher.stats.get("local", 0) == 0


async def test_an_engine_restart_is_down_then_back(vllm: VLLMServer) -> None:
    """Last in the tier: the shared vLLM is stopped and started again on its port."""
    async with driver(vllm) as engine:
        await trio.to_thread.run_sync(vllm.stop)
        await wait_until(lambda: not engine.load().healthy, within=5,
                         what="the driver marks the stopped engine down")
        await trio.to_thread.run_sync(vllm.start)
        await wait_until(lambda: engine.load().healthy, within=10,
                         what="the driver sees the engine back")
        _, generated = await run(engine, CompletionRequest(
            request_id="after", model=MODEL, prompt="x", max_tokens=4, ignore_eos=True))
        assert generated == 4


async def test_a_duel_judged_by_vllm_ends_in_an_abstention(vllm: VLLMServer) -> None:
    """A duel end to end whose one judge is the node in front of vLLM: the random model
    writes no ``Verdict:`` line, so the judge abstains, the duel is a tie, and nobody's
    standing moves."""
    book = CreditBook(shared=True)
    judge_model = "judge/tiny"
    async with MemoryNetwork(seed=9, latency=0.0005) as net, trio.open_nursery() as nursery:
        nodes: list[Node] = []
        for i in range(4):
            ident = Identity.from_seed(bytes([i + 61]) * 32)
            model = (OTHER, MODEL, MODEL, judge_model)[i]
            engine: Engine = HTTPEngine(vllm.url, judge_model, served_model=SERVED,
                                        scrape_interval=0.1) if i == 3 else \
                SimEngine(get_profile("h100/qwen3-8b"), models=(model,), seed=i)
            cfg = NodeConfig(
                server_params=ServerParams(offload_frequency=1.0, queue_frequency=1.0,
                                           accept_frequency=1.0),
                models=(ModelConfig(model_path=model, engine="sim"),),
                network=NetworkParams(network_id="duel", bootstrap=tuple(
                    n.addresses[0] for n in nodes[:1])),
                membership=PARAMS, gateway=GatewayParams(enabled=False),
                duel=DuelParams(p_inspect=1.0, k_judges=1, judge_timeout=60.0,
                                judge_max_tokens=64))
            node = Node(cfg, identity=ident, overlay=net.node(ident), engines={model: engine},
                        credit=book.open(ident.peer_id, 100.0, 10.0), rng=random.Random(i))
            await nursery.start(node.run)
            nodes.append(node)
        await wait_until(lambda: all(len(n.peers) == 3 for n in nodes), within=15,
                         what="four nodes see each other")
        requester, judge = nodes[0], nodes[3]
        with trio.fail_after(60):
            _, usage = await requester.complete(CompletionRequest(
                request_id="q", model=MODEL, prompt="which is better?", max_tokens=16,
                ignore_eos=True))
            assert usage.completion_tokens == 16
            await wait_until(lambda: requester.duels.stats["tie"] == 1, within=50,
                             what="the duel tallied")
        assert judge.duels.stats["voted_abstain"] == 1
        assert requester.duels.stats["decided"] == 0
        ratings = requester.duels.ratings()
        assert all(r.wins == r.losses == 0 for r in ratings.values())
        nursery.cancel_scope.cancel()
