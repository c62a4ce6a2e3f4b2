"""The HTTP engine driver against minimal engines: one whose plain answers carry no
``usage``, one that reports errors inside its streams as SGLang and vLLM do."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import h11
import pytest
import trio

from wwwserve.engines import ChatMessage, Chunk, CompletionRequest
from wwwserve.engines.base import approx_tokens
from wwwserve.engines.http import HTTPEngine
from wwwserve.errors import BadRequestError, EngineError

METRICS = b"""# TYPE sglang:token_usage gauge
sglang:token_usage 0.1
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs 0
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs 0
"""
ANSWER = "a plain answer of several words"


async def engine(bodies: list[dict[str, object]], stream: trio.SocketStream, *,
                 stream_error: int | None = None) -> None:
    """One connection of an OpenAI-compatible server without usage in its answers; with
    ``stream_error``, streamed requests get 200, one token and then an error event with
    that status as its code (SGLang's and vLLM's form), then ``[DONE]``."""
    conn = h11.Connection(h11.SERVER)
    while True:
        target, data = b"", b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                conn.receive_data(chunk)
            elif isinstance(event, h11.Request):
                target = event.target
            elif isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return
        if target == b"/metrics":
            payload, kind = METRICS, b"text/plain"
        elif target.endswith(b"/models"):  # the driver asks which models it serves
            payload, kind = json.dumps({"object": "list", "data": [
                {"id": "m", "object": "model"}]}).encode(), b"application/json"
        elif stream_error is not None:
            bodies.append(json.loads(data))
            token = {"choices": [{"index": 0, "delta": {"content": "a"},
                                  "finish_reason": None}]}
            error = {"error": {"message": "Input is too long", "type": "BadRequestError",
                               "param": None, "code": stream_error}}
            payload = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n"
                               for e in (token, error)) + b"data: [DONE]\n\n"
            kind = b"text/event-stream"
        else:
            bodies.append(json.loads(data))
            payload, kind = json.dumps({"choices": [{
                "index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": ANSWER}}]}).encode(), \
                b"application/json"
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=[
            (b"content-type", kind), (b"content-length", str(len(payload)).encode())])))
        await stream.send_all(conn.send(h11.Data(data=payload)) + conn.send(h11.EndOfMessage()))
        conn.start_next_cycle()


@asynccontextmanager
async def driver_of(bodies: list[dict[str, object]], **behaviour: object
                    ) -> AsyncIterator[HTTPEngine]:
    """An HTTPEngine in front of :func:`engine` on a free loopback port."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, partial(
            engine, bodies, **behaviour), 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        driver = HTTPEngine(f"http://127.0.0.1:{port}/v1", "m", scrape_interval=0.05)
        await nursery.start(driver.run)
        yield driver
        nursery.cancel_scope.cancel()


async def test_a_plain_answer_without_usage_counts_its_tokens_by_estimate() -> None:
    bodies: list[dict[str, object]] = []
    chunks: list[Chunk] = []

    async def emit(chunk: Chunk) -> None:
        chunks.append(chunk)

    async with driver_of(bodies) as driver:
        with trio.fail_after(10):
            usage = await driver.generate(CompletionRequest(
                request_id="r", messages=(ChatMessage("user", "hi"),), max_tokens=32), emit)
    assert bodies[0]["stream"] is False and "stream_options" not in bodies[0]
    assert [c.text for c in chunks] == [ANSWER, ""]
    assert usage.completion_tokens == approx_tokens(ANSWER) == chunks[0].tokens > 1
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage == usage


@pytest.mark.parametrize(("code", "error"), [(400, BadRequestError), (500, EngineError)])
async def test_an_error_inside_a_stream_is_raised_by_its_code(code: int, error: type) -> None:
    chunks: list[Chunk] = []

    async def emit(chunk: Chunk) -> None:
        chunks.append(chunk)

    async with driver_of([], stream_error=code) as driver:
        with trio.fail_after(10), pytest.raises(error, match="Input is too long") as got:
            await driver.generate(CompletionRequest(
                request_id="r", messages=(ChatMessage("user", "hi"),), max_tokens=32,
                stream=True), emit)
        assert type(got.value) is error  # a 400 is the user's to fix, not an engine failure
        assert [c.text for c in chunks] == ["a"]
        assert driver.load().healthy  # the engine answered: it is not down
