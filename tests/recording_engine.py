"""A recording OpenAI-compatible engine for tests: it keeps every request it gets (body and
headers) and answers as told (a status with headers, or a short answer)."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from waiting import wait_until
from wwwserve.config import (
    GatewayParams,
    MembershipParams,
    ModelConfig,
    NetworkParams,
    NodeConfig,
    ServerParams,
)
from wwwserve.engines import Engine, SimEngine, get_profile
from wwwserve.engines.http import HTTPEngine
from wwwserve.http.server import serve_http
from wwwserve.identity import Identity
from wwwserve.market import CreditBook
from wwwserve.node import Node
from wwwserve.overlay import MemoryNetwork

MODEL = "Qwen/Qwen3-8B"
PARAMS = MembershipParams(heartbeat_interval=0.2, suspect_timeout=1.0, peer_timeout=2.0)

METRICS = b"""# TYPE sglang:token_usage gauge
sglang:token_usage 0.1
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs 0
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs 0
"""


@dataclass
class Recording:
    """What the engine got, and how it answers completions (``status`` 200: an answer)."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    status: int = 200
    reply_headers: list[tuple[str, str]] = field(default_factory=list)
    message: str = "engine says no"
    url: str = ""
    #: the answer to give instead of "ok": (streamed events, the whole response)
    script: tuple[list[dict[str, Any]], dict[str, Any]] | None = None
    #: what /metrics answers (SGLang's names by default)
    metrics: bytes = METRICS
    #: seconds /metrics takes to answer (a busy engine is slow to)
    metrics_delay: float = 0.0
    #: what /v1/models lists (None: 404)
    models: list[str] | None = None

    @property
    def calls(self) -> int:
        """Completion requests received."""
        return len(self.bodies)


#: the name the engine answers under (as vLLM's ``--served-model-name``)
SERVED = "served/qwen3-8b"

_CALL_ARGS = '{"city":"Paris"}'
_LOGPROBS = [{"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": [
    {"token": t, "logprob": lp, "bytes": list(t.encode())}]} for t, lp in (("a", -0.5),
                                                                          ("b", -1.25))]


def tool_call_script() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """An engine's answer that thinks, then calls a tool, with logprobs: streamed and whole."""
    meta = {"id": "chatcmpl-engine", "object": "chat.completion.chunk", "created": 1,
            "model": SERVED, "system_fingerprint": "fp-engine"}
    events = [
        {**meta, "choices": [{"index": 0, "delta": {"role": "assistant", "content": None,
                                                    "reasoning_content": "Weather, "},
                              "logprobs": None, "finish_reason": None}]},
        {**meta, "choices": [{"index": 0, "delta": {"reasoning_content": "so a tool."},
                              "logprobs": None, "finish_reason": None}]},
        {**meta, "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_9", "type": "function",
             "function": {"name": "get_weather", "arguments": ""}}]},
            "logprobs": {"content": _LOGPROBS[:1]}, "finish_reason": None}]},
        {**meta, "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": _CALL_ARGS}}]},
            "logprobs": {"content": _LOGPROBS[1:]}, "finish_reason": "tool_calls"}]},
        {**meta, "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 9,
                                          "total_tokens": 21}},
    ]
    whole = {"id": "chatcmpl-engine", "object": "chat.completion", "created": 1,
             "model": SERVED, "system_fingerprint": "fp-engine",
             "choices": [{"index": 0, "message": {
                 "role": "assistant", "content": None,
                 "reasoning_content": "Weather, so a tool.",
                 "tool_calls": [{"id": "call_9", "type": "function", "function": {
                     "name": "get_weather", "arguments": _CALL_ARGS}}]},
                 "logprobs": {"content": _LOGPROBS}, "finish_reason": "tool_calls"}],
             "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}}
    return events, whole


def _answer(body: dict[str, Any], script: tuple[list[dict[str, Any]], dict[str, Any]] | None
            = None) -> tuple[bytes, bytes]:
    if script is not None:
        events, whole = script
        if body.get("stream"):
            data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
            return data + b"data: [DONE]\n\n", b"text/event-stream"
        return json.dumps(whole).encode(), b"application/json"
    chat = "messages" in body
    if body.get("stream"):
        delta = {"delta": {"role": "assistant", "content": "ok"}} if chat else {"text": "ok"}
        events = [{"choices": [{"index": 0, **delta, "finish_reason": None}]},
                  {"choices": [{"index": 0, **({"delta": {}} if chat else {"text": ""}),
                                "finish_reason": "stop"}]},
                  {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1,
                                            "total_tokens": 4}}]
        data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
        return data + b"data: [DONE]\n\n", b"text/event-stream"
    choice = ({"message": {"role": "assistant", "content": "ok"}} if chat else {"text": "ok"})
    return json.dumps({"choices": [{"index": 0, **choice, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1,
                                 "total_tokens": 4}}).encode(), b"application/json"


def recording_app(rec: Recording) -> Any:
    """The ASGI app of a recording engine."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        data = b""
        while True:
            event = await receive()
            data += event.get("body", b"")
            if not event.get("more_body"):
                break
        headers = [(b"content-type", b"application/json")]
        if scope["path"] == "/metrics":
            if rec.metrics_delay:
                await trio.sleep(rec.metrics_delay)
            payload, headers = rec.metrics, [(b"content-type", b"text/plain")]
            status = 200
        elif scope["path"] == "/v1/models":
            status = 200 if rec.models is not None else 404
            payload = json.dumps({"object": "list", "data": [
                {"id": m, "object": "model"} for m in rec.models or ()]}).encode()
        elif scope["path"] == "/health":
            payload, status = b"{}", 200
        else:
            body = json.loads(data)
            rec.bodies.append(body)
            rec.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
            status = rec.status
            if status == 200:
                payload, kind = _answer(body, rec.script)
                headers = [(b"content-type", kind)]
            else:
                payload = json.dumps({"error": {"message": rec.message, "type": "error",
                                                "param": None, "code": status}}).encode()
                headers += [(k.encode(), v.encode()) for k, v in rec.reply_headers]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return app


@asynccontextmanager
async def recording_engine(**behaviour: Any) -> AsyncIterator[Recording]:
    """A recording engine on a free loopback port (its base URL in ``url``)."""
    rec = Recording(**behaviour)
    async with trio.open_nursery() as nursery:
        rec.url = await nursery.start(serve_http, recording_app(rec), "127.0.0.1", 0)
        try:
            yield rec
        finally:
            nursery.cancel_scope.cancel()


PARAMS = MembershipParams(heartbeat_interval=0.2, suspect_timeout=1.0, peer_timeout=2.0)


@asynccontextmanager
async def node_in_front_of(rec: Recording, *, peer: bool = False, **gateway: Any
                           ) -> AsyncIterator[httpx.AsyncClient]:
    """A node whose only local engine is ``rec``, with its gateway; with ``peer``, a second
    node serving the same model on a healthy simulated engine."""
    book = CreditBook(shared=True)
    async with MemoryNetwork(seed=3, latency=0.0005) as net, trio.open_nursery() as nursery:
        nodes: list[Node] = []
        for i in range(2 if peer else 1):
            ident = Identity.from_seed(bytes([i + 9]) * 32)
            engine: Engine = HTTPEngine(rec.url, MODEL, scrape_interval=0.05) if i == 0 \
                else SimEngine(get_profile("h100/qwen3-8b"), models=(MODEL,), seed=i)
            cfg = NodeConfig(
                server_params=ServerParams(offload_frequency=0.0, queue_frequency=1.0,
                                           accept_frequency=1.0),
                models=(ModelConfig(model_path=MODEL, engine="sim"),),
                network=NetworkParams(network_id="ef", bootstrap=tuple(
                    n.addresses[0] for n in nodes)),
                membership=PARAMS, gateway=GatewayParams(port=0, enabled=i == 0, **gateway))
            node = Node(cfg, identity=ident, overlay=net.node(ident), engines={MODEL: engine},
                        credit=book.open(ident.peer_id, 100.0, 10.0), rng=random.Random(i))
            await nursery.start(node.run)
            nodes.append(node)
        if peer:
            await wait_until(lambda: len(nodes[0].membership.peers) == 1, within=10,
                             what="the nodes see each other")
        async with httpx.AsyncClient(base_url=nodes[0].gateway_url, timeout=30) as client:
            yield client
        nursery.cancel_scope.cancel()
