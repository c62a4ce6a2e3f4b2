"""What kind of engine sits at ``base_url``, under which name it serves the model, and how
many tokens it generated: told by the engine itself (its /metrics, /v1/models and usage),
over real HTTP on loopback against a recording engine."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import trio

from recording_engine import MODEL, recording_engine
from waiting import wait_until
from wwwserve.config import GatewayParams, ModelConfig, NodeConfig
from wwwserve.engines import ChatMessage, Chunk, CompletionRequest
from wwwserve.engines.http import SLOW_SCRAPES_DOWN, HTTPEngine, detect_kind
from wwwserve.errors import ConfigError
from wwwserve.identity import Identity
from wwwserve.node import Node
from wwwserve.overlay import MemoryNetwork

VLLM_METRICS = b"""# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="local-qwen"} 0.25
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="local-qwen"} 2
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="local-qwen"} 1
"""


def test_the_kind_is_told_by_the_metric_names() -> None:
    assert detect_kind(VLLM_METRICS.decode()) == "vllm"
    assert detect_kind("sglang:token_usage 0\nsglang:num_running_reqs 0\n"
                       "sglang:num_queue_reqs 0\n") == "sglang"
    assert detect_kind("process_cpu_seconds_total 3\n") is None


async def run_engine(engine: HTTPEngine) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        nursery.cancel_scope.cancel()


async def test_auto_reads_a_vllm_and_finds_its_served_name() -> None:
    async with recording_engine(metrics=VLLM_METRICS, models=["local-qwen"]) as rec:
        engine = HTTPEngine(rec.url, MODEL, scrape_interval=0.05)
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            assert engine.kind == "vllm" and engine.served_model == "local-qwen"
            load = engine.load()
            assert (load.token_usage, load.running, load.queued, load.healthy) == \
                (0.25, 2, 1, True)

            async def emit(chunk: Chunk) -> None:
                pass

            await engine.generate(CompletionRequest(request_id="r", model=MODEL, prompt="p",
                                                    max_tokens=4), emit)
            assert rec.bodies[-1]["model"] == "local-qwen"
            nursery.cancel_scope.cancel()


async def test_an_explicit_kind_the_metrics_contradict_is_a_config_error() -> None:
    async with recording_engine(metrics=VLLM_METRICS) as rec:
        engine = HTTPEngine(rec.url, MODEL, kind="sglang", config_key="models[0]")
        with pytest.RaisesGroup(pytest.RaisesExc(
                ConfigError, match=r"models\[0\]\.engine: sglang is configured.*"
                                   r"exports vllm's metrics; set engine: vllm"),
                flatten_subgroups=True):
            await run_engine(engine)


async def test_an_engine_serving_other_models_is_a_config_error_naming_the_key() -> None:
    async with recording_engine(models=["a", "b"]) as rec:
        engine = HTTPEngine(rec.url, MODEL, config_key="models[1]")
        with pytest.RaisesGroup(pytest.RaisesExc(
                ConfigError, match=r"models\[1\]\.served_model_name: .* serves a, b"),
                flatten_subgroups=True):
            await run_engine(engine)
    async with recording_engine(models=["a", "b"]) as rec:
        named = HTTPEngine(rec.url, MODEL, served_model="b")
        await run_engine(named)  # told which: fine
        assert named.served_model == "b"


async def test_a_node_with_a_mismatched_engine_stops_with_the_key_named() -> None:
    async with recording_engine(metrics=VLLM_METRICS) as rec, MemoryNetwork() as net:
        ident = Identity.from_seed(b"\x07" * 32)
        cfg = NodeConfig(models=(ModelConfig(model_path=MODEL, base_url=rec.url,
                                             engine="sglang"),),
                         gateway=GatewayParams(enabled=False))
        node = Node(cfg, identity=ident, overlay=net.node(ident), rng=random.Random(0))
        with pytest.raises(ConfigError, match=r"models\[0\]\.engine"):  # unwrapped by the node
            with trio.fail_after(10):
                await node.run()


def _events(tokens: list[str]) -> list[dict[str, Any]]:
    """A text completion's stream, one event per token."""
    out: list[dict[str, Any]] = [{"choices": [{"index": 0, "text": t,
                                               "finish_reason": None}]} for t in tokens]
    out.append({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]})
    out.append({"choices": [], "usage": {"prompt_tokens": 2,
                                         "completion_tokens": len(tokens) + 1}})
    return out


async def test_tokens_are_the_engines_count_even_those_without_text() -> None:
    # five tokens streamed, two of them decode to no text, and one more the engine counted
    events = _events(["a", "", "b", "", "c"])
    script = (events, {"choices": [{"index": 0, "text": "abc", "finish_reason": "length"}],
                       "usage": {"prompt_tokens": 2, "completion_tokens": 6}})
    async with recording_engine(script=script) as rec:
        engine = HTTPEngine(rec.url, MODEL, scrape_interval=0.05)
        chunks: list[Chunk] = []

        async def emit(chunk: Chunk) -> None:
            chunks.append(chunk)

        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            await wait_until(lambda: engine.load().healthy, within=5, what="engine up")
            usage = await engine.generate(CompletionRequest(
                request_id="r", model=MODEL, prompt="p", max_tokens=6, stream=True), emit)
            nursery.cancel_scope.cancel()
        assert usage.completion_tokens == 6
        assert sum(c.tokens for c in chunks) == 6
        assert "".join(c.text for c in chunks) == "abc"
        assert json.dumps(rec.bodies[-1]["stream_options"]) == '{"include_usage": true}'


async def test_a_chat_streams_opening_role_event_is_not_a_token() -> None:
    # vLLM opens a chat stream with the role and empty content: no token generated yet
    opening = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None}]}
    tokens = [{"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]}
              for t in ("a", "", "b")]
    end = [{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
           {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}}]
    script = ([opening, *tokens, *end], {})
    async with recording_engine(script=script) as rec:
        engine = HTTPEngine(rec.url, MODEL, scrape_interval=0.05)
        chunks: list[Chunk] = []

        async def emit(chunk: Chunk) -> None:
            chunks.append(chunk)

        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            await wait_until(lambda: engine.load().healthy, within=5, what="engine up")
            usage = await engine.generate(CompletionRequest(
                request_id="r", model=MODEL, messages=(ChatMessage("user", "hi"),),
                max_tokens=3, stream=True), emit)
            nursery.cancel_scope.cancel()
        assert usage.completion_tokens == 3
        assert sum(c.tokens for c in chunks) == 3


async def test_a_slow_scrape_keeps_the_last_reading_and_the_running_requests() -> None:
    """A real vLLM busy with a burst answered /metrics after more than the scrape timeout
    while it served every request: marking it down at once cancelled them all."""
    async with recording_engine(metrics=VLLM_METRICS, models=["local-qwen"]) as rec:
        engine = HTTPEngine(rec.url, MODEL, scrape_interval=0.02, scrape_timeout=0.2)
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            rec.metrics_delay = 0.5
            await wait_until(lambda: engine.scrape_failures >= SLOW_SCRAPES_DOWN - 1,
                             within=5, what="slow scrapes")
            # still up, on the last reading, until SLOW_SCRAPES_DOWN slow scrapes in a row
            assert engine.load().healthy and engine.load().running == 2
            await wait_until(lambda: not engine.load().healthy, within=5,
                             what=f"down after {SLOW_SCRAPES_DOWN} slow scrapes in a row")
            rec.metrics_delay = 0.0
            await wait_until(lambda: engine.load().healthy, within=5, what="back")
            nursery.cancel_scope.cancel()


async def test_a_scrape_whose_connection_breaks_is_not_a_dead_engine(
        caplog: pytest.LogCaptureFixture) -> None:
    """A real vLLM under a burst now and then dropped a kept-alive /metrics connection
    without an answer (httpx: "Server disconnected without sending a response"); the
    driver marked it down at once and cancelled every request it was serving. A refused
    connection, nobody listening, is still down at once."""
    drop = 0  # connections to close unanswered

    async def serve(stream: trio.SocketStream) -> None:
        nonlocal drop
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            if drop:
                drop -= 1
                return  # closed: no status line, no body
            path = data.split(b" ", 2)[1]
            body = VLLM_METRICS if path == b"/metrics" else b"{}"
            await stream.send_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n"
                                  b"content-length: %d\r\n\r\n%s" % (len(body), body))

    listening = trio.CancelScope()

    async def listen(*, task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
        with listening:
            await trio.serve_tcp(serve, 0, host="127.0.0.1", task_status=task_status)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(listen)
        port = listeners[0].socket.getsockname()[1]
        engine = HTTPEngine(f"http://127.0.0.1:{port}", MODEL, served_model="local-qwen",
                            scrape_interval=0.02)
        await nursery.start(engine.run)
        assert engine.load().healthy and engine.load().running == 2
        drop = SLOW_SCRAPES_DOWN - 1
        await wait_until(lambda: drop == 0 and engine.scrape_failures == SLOW_SCRAPES_DOWN - 1,
                         within=5, what="broken scrapes")
        await wait_until(lambda: engine.scrapes > SLOW_SCRAPES_DOWN + 2, within=5,
                         what="scrapes after them")
        # never marked down in between (which cancels every request being served)
        assert engine.load().healthy and "unavailable" not in caplog.text
        assert engine.scrape_failures == SLOW_SCRAPES_DOWN - 1
        failures = engine.scrape_failures
        listening.cancel()  # nobody listening: down at the first refusal
        await wait_until(lambda: engine.scrape_failures > failures, within=5, every=0.001,
                         what="a refused scrape")
        assert not engine.load().healthy
        nursery.cancel_scope.cancel()
