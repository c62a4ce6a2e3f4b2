"""The HTTP engine driver against ``wwwserve sim-engine`` running as a separate process."""

from __future__ import annotations

import pytest
import trio

from wwwserve.engines import ChatMessage, Chunk, CompletionRequest
from wwwserve.engines.http import HTTPEngine
from wwwserve.errors import EngineUnavailableError
from wwwserve.testing import ChildProcess

MODEL = "Qwen/Qwen3-8B"


def sim_engine(port: int = 0) -> ChildProcess:
    return ChildProcess(["sim-engine", "--profile", "rtx4090/qwen3-8b", "--port", str(port),
                         "--model", MODEL, "--json"])


async def test_driver_streams_accounts_and_reads_load() -> None:
    async with trio.open_nursery() as nursery:
        proc = sim_engine()
        url = (await proc.start(nursery))["url"]
        engine = HTTPEngine(url + "/v1", MODEL, kind="sglang", scrape_interval=0.05)
        await nursery.start(engine.run)
        assert engine.load().healthy and engine.load().running == 0
        chunks: list[Chunk] = []

        async def emit(chunk: Chunk) -> None:
            chunks.append(chunk)

        chat = CompletionRequest(request_id="c1", messages=(ChatMessage("user", "x" * 400),),
                                 max_tokens=20, ignore_eos=True, model=MODEL)
        usage = await engine.generate(chat, emit)
        assert usage.completion_tokens == 20 and usage.prompt_tokens > 100
        assert chunks[-1].finish_reason == "length" and chunks[-1].usage == usage
        assert sum(c.tokens for c in chunks) == 20 and "".join(c.text for c in chunks).strip()

        text = CompletionRequest(request_id="t1", prompt="once", max_tokens=5,
                                 ignore_eos=True)
        assert (await engine.generate(text, emit)).completion_tokens == 5

        # load seen through /metrics while requests run
        peak = 0
        usage_seen = 0.0

        async def one(i: int) -> None:
            await engine.generate(CompletionRequest(
                request_id=f"b{i}", prompt="y" * 4000, max_tokens=300, ignore_eos=True), emit)

        async with trio.open_nursery() as burst:
            for i in range(8):
                burst.start_soon(one, i)
            with trio.fail_after(20):
                while peak < 8 or usage_seen == 0.0:
                    await trio.sleep(0.05)
                    load = engine.load()
                    peak = max(peak, load.running + load.queued)
                    usage_seen = max(usage_seen, load.token_usage)
        assert 0.0 < usage_seen <= 1.0  # 8 prompts of 4,000 tokens fill part of the KV cache
        await proc.stop()
        nursery.cancel_scope.cancel()


async def test_short_unstreamed_requests_come_whole_and_the_rest_streamed() -> None:
    async with trio.open_nursery() as nursery:
        url = (await sim_engine().start(nursery))["url"]
        engine = HTTPEngine(url + "/v1", MODEL, scrape_interval=0.05, unstreamed_max_tokens=16)
        await nursery.start(engine.run)
        got: dict[str, list[Chunk]] = {}

        async def run(rid: str, *, stream: bool, max_tokens: int, chat: bool) -> None:
            chunks = got.setdefault(rid, [])

            async def emit(chunk: Chunk) -> None:
                chunks.append(chunk)

            kw = {"messages": (ChatMessage("user", "hi"),)} if chat else {"prompt": "hi"}
            usage = await engine.generate(CompletionRequest(
                request_id=rid, max_tokens=max_tokens, ignore_eos=True, stream=stream,
                model=MODEL, **kw), emit)
            assert usage.completion_tokens == max_tokens
            assert sum(c.tokens for c in chunks) == max_tokens
            assert chunks[-1].finish_reason == "length" and chunks[-1].usage == usage

        for chat in (True, False):
            await run(f"plain-{chat}", stream=False, max_tokens=16, chat=chat)
            await run(f"long-{chat}", stream=False, max_tokens=17, chat=chat)
            await run(f"stream-{chat}", stream=True, max_tokens=16, chat=chat)
        nursery.cancel_scope.cancel()
    for chat in (True, False):
        # one plain response: the whole text in one chunk, then the finish
        assert [c.tokens for c in got[f"plain-{chat}"]] == [16, 0]
        # the same answer as a stream of it (a word per token after the quality marker)
        words = {len("".join(c.text for c in got[f"{kind}-{chat}"]).split())
                 for kind in ("plain", "stream")}
        assert words == {17}
        # more than unstreamed_max_tokens, or asked to stream: a chunk per token
        assert len(got[f"long-{chat}"]) == 18 and len(got[f"stream-{chat}"]) == 17


async def test_engine_down_fails_requests_over_and_recovers() -> None:
    async with trio.open_nursery() as nursery:
        proc = sim_engine()
        url = (await proc.start(nursery))["url"]
        port = int(url.rsplit(":", 1)[1])
        engine = HTTPEngine(url, MODEL, scrape_interval=0.05, connect_timeout=1.0)
        await nursery.start(engine.run)
        got: list[Chunk] = []

        async def emit(chunk: Chunk) -> None:
            got.append(chunk)
            if len(got) == 3:
                proc.kill()  # the engine dies mid-request

        long = CompletionRequest(request_id="l1", prompt="x", max_tokens=3000,
                                 ignore_eos=True)
        with pytest.raises(EngineUnavailableError), trio.fail_after(10):
            await engine.generate(long, emit)
        with trio.fail_after(5):
            while engine.load().healthy:
                await trio.sleep(0.02)
        with pytest.raises(EngineUnavailableError, match="unavailable"):
            await engine.generate(long, emit)
        # the same engine comes back on the same port: the model is available again
        proc2 = sim_engine(port)
        await proc2.start(nursery)
        with trio.fail_after(10):
            while not engine.load().healthy:
                await trio.sleep(0.02)
        short = CompletionRequest(request_id="s1", prompt="x", max_tokens=3, ignore_eos=True)
        assert (await engine.generate(short, emit)).completion_tokens == 3
        await proc2.stop()
        nursery.cancel_scope.cancel()
