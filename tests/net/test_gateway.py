"""The gateway over real HTTP on loopback, driven by the official ``openai`` client.

Two nodes on an in-memory overlay (real time): ``a`` serves model A behind its gateway,
``b`` serves model B. Requests for B through ``a``'s gateway are offloaded to ``b``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import openai
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

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
from wwwserve.log import TraceFilter
from wwwserve.market import CreditBook
from wwwserve.node import Node
from wwwserve.overlay import MemoryNetwork

A, B = "Qwen/Qwen3-8B", "Qwen/Qwen3-0.6B"
PARAMS = MembershipParams(heartbeat_interval=0.2, suspect_timeout=1.0, peer_timeout=2.0)


@dataclass
class Net:
    a: Node
    b: Node
    engine_a: SimEngine
    client: openai.AsyncOpenAI


@asynccontextmanager
async def gateway_net(**gateway: object) -> AsyncIterator[Net]:
    book = CreditBook(shared=True)
    async with MemoryNetwork(seed=1, latency=0.0005) as net, trio.open_nursery() as nursery:
        nodes = []
        engines = []
        for i, model in enumerate((A, B)):
            ident = Identity.from_seed(bytes([i + 1]) * 32)
            boot = (nodes[0].addresses[0],) if nodes else ()
            cfg = NodeConfig(
                server_params=ServerParams(offload_frequency=1.0, queue_frequency=1.0,
                                           accept_frequency=1.0),
                models=(ModelConfig(model_path=model, engine="sim"),),
                network=NetworkParams(network_id="gw", bootstrap=boot), membership=PARAMS,
                gateway=GatewayParams(port=0, enabled=i == 0, **gateway))  # type: ignore[arg-type]
            engine = SimEngine(get_profile("h100/qwen3-8b"), models=(model,), seed=i)
            node = Node(cfg, identity=ident, overlay=net.node(ident), engines={model: engine},
                        credit=book.open(ident.peer_id, 100.0, 10.0), rng=random.Random(i))
            await nursery.start(node.run)
            nodes.append(node)
            engines.append(engine)
        with trio.fail_after(10):
            while B not in nodes[0].dispatcher.network_models():
                await trio.sleep(0.05)
        assert nodes[0].gateway_url
        client = openai.AsyncOpenAI(base_url=nodes[0].gateway_url + "/v1",
                                    api_key=str(gateway.get("api_key", "none")), max_retries=0)
        try:
            yield Net(nodes[0], nodes[1], engines[0], client)
        finally:
            await client.close()
            nursery.cancel_scope.cancel()


async def test_plain_and_streamed_chat_and_text_completions() -> None:
    async with gateway_net() as net:
        c = net.client
        r = await c.chat.completions.create(model=A, max_tokens=9, extra_body={
            "ignore_eos": True}, messages=[{"role": "user", "content": "hello there"}])
        assert r.object == "chat.completion" and r.model == A
        assert r.choices[0].finish_reason == "length" and r.choices[0].message.content
        assert r.usage is not None and r.usage.completion_tokens == 9
        assert r.usage.prompt_tokens > 0

        stream = await c.chat.completions.create(
            model=A, max_tokens=12, stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True}, messages=[{"role": "user", "content": "hi"}])
        parts, finish, usage = [], None, None
        async for ev in stream:
            for ch in ev.choices:
                parts.append(ch.delta.content or "")
                finish = ch.finish_reason or finish
            usage = ev.usage or usage
        assert finish == "length" and usage is not None and usage.completion_tokens == 12
        assert "".join(parts).strip()

        t = await c.completions.create(model=A, prompt="once upon", max_tokens=5,
                                       extra_body={"ignore_eos": True})
        assert t.object == "text_completion" and t.choices[0].text
        assert t.usage is not None and t.usage.completion_tokens == 5
        ts = await c.completions.create(model=A, prompt="x", max_tokens=4, stream=True,
                                        extra_body={"ignore_eos": True})
        texts = [ch.choices[0].text async for ch in ts if ch.choices]
        assert "".join(texts)


async def test_models_lists_the_network_and_remote_models_are_offloaded() -> None:
    async with gateway_net() as net:
        models = await net.client.models.list()
        assert {m.id for m in models.data} == {A, B}
        r = await net.client.chat.completions.create(
            model=B, max_tokens=6, messages=[{"role": "user", "content": "x"}],
            extra_body={"ignore_eos": True})
        assert r.usage is not None and r.usage.completion_tokens == 6
        assert net.a.dispatcher.stats["offloaded"] == 1
        assert net.b.dispatcher.stats["accepted"] == 1


async def test_errors_use_openai_envelope_and_status() -> None:
    async with gateway_net(max_body_bytes=2000) as net:
        c = net.client
        with pytest.raises(openai.NotFoundError, match="not served"):
            await c.chat.completions.create(model="nope", messages=[
                {"role": "user", "content": "x"}])
        with pytest.raises(openai.BadRequestError, match="temperature") as bad:
            await c.chat.completions.create(model=A, temperature=9, messages=[
                {"role": "user", "content": "x"}])
        assert bad.value.body["param"] == "temperature"  # type: ignore[index]
        with pytest.raises(openai.APIStatusError) as big:
            await c.completions.create(model=A, prompt="x" * 5000)
        assert big.value.status_code == 413
        with pytest.raises(openai.APIStatusError) as late:
            await c.completions.create(model=A, prompt="x", max_tokens=5000,
                                       extra_body={"ignore_eos": True, "timeout": 0.05})
        assert late.value.status_code == 504
        # the only engine for A is down and no peer serves A: 503 with Retry-After
        net.engine_a.crash()
        with pytest.raises(openai.InternalServerError) as busy:
            await c.completions.create(model=A, prompt="x")
        assert busy.value.status_code == 503
        assert busy.value.response.headers["retry-after"] == "1"
        net.engine_a.recover()
        metrics = await c.get(net.a.gateway_url + "/metrics", cast_to=str)
        outcomes = {s.labels["outcome"]: s.value
                    for f in text_string_to_metric_families(metrics) for s in f.samples
                    if s.name == "wwwserve_requests_total"}
        assert outcomes == {"not_found": 1, "bad_request": 2, "deadline": 1, "no_capacity": 1}
        # no creation-time series (a counter and a histogram each had one)
        assert "_created" not in metrics and "wwwserve_ttft_seconds_count" in metrics


async def test_stream_broken_after_first_token_ends_with_an_error_event() -> None:
    async with gateway_net() as net:
        stream = await net.client.chat.completions.create(
            model=A, max_tokens=3000, stream=True, extra_body={"ignore_eos": True},
            messages=[{"role": "user", "content": "x"}])
        got = 0
        with pytest.raises(openai.APIError, match="broke off"):
            async for _ev in stream:
                got += 1
                if got == 3:
                    net.engine_a.crash()
        assert got >= 3


async def test_bearer_key_is_required_when_configured() -> None:
    async with gateway_net(api_key="s3cret") as net:
        r = await net.client.completions.create(model=A, prompt="x", max_tokens=2)
        assert r.choices[0].text
        wrong = openai.AsyncOpenAI(base_url=net.a.gateway_url + "/v1", api_key="guess",
                                   max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await wrong.models.list()
        # health and metrics stay open for probes and scrapers
        health = await wrong.get(net.a.gateway_url + "/health", cast_to=str)
        assert "ok" in health
        await wrong.close()


async def test_status_reports_peers_credit_and_load() -> None:
    async with gateway_net() as net:
        status = await net.client.get(net.a.gateway_url + "/status", cast_to=object)
        assert isinstance(status, dict)
        assert status["peer_id"] == net.a.peer_id
        assert [p["peer_id"] for p in status["peers"]] == [net.b.peer_id]
        assert status["models"][0]["model"] == A and status["models"][0]["healthy"]
        assert status["credit"] + status["stake"] == 110.0  # 100 liquid + 10 staked


async def test_gateway_port_in_use_fails_the_node_start_cleanly() -> None:
    from wwwserve.errors import ListenError

    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    async with MemoryNetwork(seed=1) as net:
        ident = Identity.from_seed(b"\x07" * 32)
        cfg = NodeConfig(gateway=GatewayParams(port=port), membership=PARAMS)
        with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{port}"), \
                trio.fail_after(10):
            async with Node(cfg, identity=ident, overlay=net.node(ident), rng=random.Random(0)):
                pass  # pragma: no cover
    sock.close()


async def test_status_command_reads_a_running_node(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from wwwserve.cli import main

    async with gateway_net() as net:
        url = net.a.gateway_url
        assert url is not None
        assert await trio.to_thread.run_sync(main, ["status", url, "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["peer_id"] == net.a.peer_id
        assert await trio.to_thread.run_sync(main, ["status", url]) == 0
        out = capsys.readouterr().out
        assert net.b.peer_id[-6:] in out and "healthy" in out
    # nobody there any more: a one-line error, exit code 1
    assert await trio.to_thread.run_sync(main, ["status", url]) == 1
    assert "no node answers at" in capsys.readouterr().err


async def test_a_request_is_logged_under_the_users_request_id_on_every_hop(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wwwserve")
    caplog.handler.addFilter(TraceFilter())
    async with gateway_net() as net:
        raw = await net.client.chat.completions.with_raw_response.create(
            model=B, max_tokens=6, messages=[{"role": "user", "content": "x"}],
            extra_headers={"X-Request-Id": "trace-abc.1"})
        assert raw.headers["x-request-id"] == "trace-abc.1"
        traced = [(r.name, r.getMessage()) for r in caplog.records
                  if getattr(r, "trace", None) == "trace-abc.1"]
        # the requester (a) and the executor (b) both logged their part under the id
        assert any(m.startswith(f"offloaded: served by {net.b.peer_id}") for _, m in traced)
        assert any(m.startswith(f"executed for {net.a.peer_id}") for _, m in traced)
        # without the header the gateway makes an id, and says which
        made = await net.client.chat.completions.with_raw_response.create(
            model=A, max_tokens=3, messages=[{"role": "user", "content": "x"}])
        assert made.headers["x-request-id"] and made.headers["x-request-id"] != "trace-abc.1"
        with pytest.raises(openai.BadRequestError, match="X-Request-Id: must be 1-64"):
            await net.client.chat.completions.create(
                model=A, max_tokens=3, messages=[{"role": "user", "content": "x"}],
                extra_headers={"X-Request-Id": "no spaces allowed"})


async def _raw(url: str, data: bytes) -> bytes:
    """Send raw bytes to the gateway at ``url``; everything it answers until it closes."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    out = b""
    async with stream:
        await stream.send_all(data)
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                out += chunk
    return out


async def test_hostile_http_gets_openai_errors_never_a_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    """What the red team sent: JSON nested 1,000 deep (a 500 and a RecursionError traceback
    in the log), ``n: true`` (accepted), a malformed request line and 64 KiB of headers
    (hypercorn's bare 400/431 without a body)."""
    async with gateway_net() as net:
        c = net.client
        deep = {"messages": [{"role": "user", "content": "x"}]}
        url = net.a.gateway_url
        assert url is not None
        async with httpx.AsyncClient() as http:
            for depth in (1_000, 100_000):
                got = await http.post(url + "/v1/chat/completions",
                                      content=b'{"a": ' + b"[" * depth + b"]" * depth + b"}")
                assert got.status_code == 400
                assert "nested too deeply" in got.json()["error"]["message"]
        with pytest.raises(openai.BadRequestError, match="n: only n=1"):
            await c.chat.completions.create(model=A, messages=deep["messages"],  # type: ignore[arg-type]
                                            extra_body={"n": True})
        bad_line = await _raw(url, b"GARBAGE\r\n\r\n")
        assert bad_line.startswith(b"HTTP/1.1 400") and b'"error"' in bad_line
        huge = await _raw(url, b"GET /health HTTP/1.1\r\nhost: x\r\nx-junk: "
                          + b"a" * 65536 + b"\r\n\r\n")
        assert huge.split(b" ", 2)[1] in (b"400", b"431") and b'"error"' in huge
    assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text


async def test_an_idle_connection_is_closed_after_the_keep_alive() -> None:
    """A connection that never sends a whole request (slow loris) does not stay open."""
    async with gateway_net() as net:
        url = net.a.gateway_url
        assert url is not None
        host, port = url.removeprefix("http://").rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(b"GET /health HTTP/1.1\r\nhost:")  # and nothing more
            with trio.fail_after(45):  # the keep-alive is 30 s
                assert await stream.receive_some(65536) == b""
