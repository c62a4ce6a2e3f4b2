"""Hypothesis fuzz of the gateway over real HTTP on loopback.

Each example starts a two-node network with a gateway and sends it a batch of requests
drawn from what a careless or hostile client can send: OpenAI-shaped bodies whose fields
hold any JSON, bodies that are not JSON or not UTF-8, any method on any path, odd headers,
and raw bytes that are barely HTTP. Every answer must be a success or an OpenAI error
envelope (never a 500), the log must hold no traceback, and the gateway must still answer
``/health`` afterwards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from test_gateway import A, B, gateway_net

from log_capture import captured_logs, tracebacks

FIELDS = ("model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature",
          "top_p", "stream", "stream_options", "n", "stop", "ignore_eos", "tools", "seed",
          "response_format", "user", "logprobs")
PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/status",
         "/metrics", "/ledger", "/v1/embeddings", "/v1/chat/completions/x", "/", "/%ff",
         "/v1/../status")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12)
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]) | json_values,
     "content": st.text(max_size=60) | json_values}), max_size=3)
plausible = {
    "model": st.sampled_from([A, B, "auto", "", "nope"]) | json_values,
    "messages": messages | json_values,
    "prompt": st.text(max_size=60) | st.lists(st.text(max_size=10), max_size=3) | json_values,
    "max_tokens": st.integers(-5, 12) | json_values,
    "stream": st.booleans() | json_values,
}


@dataclass(frozen=True)
class Deep:
    """A body of arrays nested ``depth`` deep (built when sent: its repr stays short)."""

    depth: int

    def render(self) -> bytes:
        return b'{"messages": ' + b"[" * self.depth + b"]" * self.depth + b"}"


@st.composite
def bodies(draw: st.DrawFn) -> bytes | Deep:
    kind = draw(st.sampled_from(["openai", "openai", "openai", "json", "bytes", "deep"]))
    if kind == "deep":  # arrays in arrays, as deep as a stranger likes
        return Deep(draw(st.integers(1, 100_000)))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    body: dict[str, Any] = {}
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=8, unique=True)):
        body[field] = draw(plausible.get(field, json_values))
    return json.dumps(body).encode()


requests = st.tuples(
    st.sampled_from(["POST", "POST", "GET", "PUT", "DELETE", "OPTIONS"]),
    st.sampled_from(PATHS),
    bodies(),
    st.dictionaries(st.sampled_from(["content-type", "x-request-id", "authorization",
                                     "accept", "x-junk"]),
                    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
                    .map(str.strip),  # (httpx itself refuses values with outer blanks)
                    max_size=3))
raw_requests = st.one_of(
    st.binary(min_size=1, max_size=200).map(lambda b: b + b"\r\n\r\n"),
    st.tuples(st.sampled_from([b"POST", b"GET", b"\xff"]), st.binary(max_size=40),
              st.binary(max_size=100)).map(
        lambda t: t[0] + b" /v1/chat/completions" + t[1] + b" HTTP/1.1\r\nhost: x\r\n"
        b"content-length: 5\r\n\r\n" + t[2]))


async def send_raw(url: str, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection; what the gateway answers within 3 s."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    out = b""
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(data)
        with trio.move_on_after(3):
            while chunk := await stream.receive_some(65536):
                out += chunk
    return out


def check_answer(status: int, headers: httpx.Headers, body: bytes, what: str) -> None:
    # 501: only the endpoints wwwserve says it does not implement
    not_implemented = status == 501 and what.split(" ")[1].split("?")[0] in (
        "/v1/embeddings", "/v1/responses")
    assert status < 500 or status in (503, 504) or not_implemented, (what, status, body[:300])
    if status >= 400 and headers.get("content-type", "").startswith("application/json"):
        error = json.loads(body)["error"]
        assert isinstance(error["message"], str) and error["message"], what
    elif status >= 400:
        raise AssertionError(f"{what}: a {status} without an OpenAI error body: {body[:200]!r}")


# no shrinking: each example costs seconds, and the assertion says which request failed
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(batch=st.lists(requests, min_size=10, max_size=25),
       raw=st.lists(raw_requests, max_size=4))
async def test_any_request_gets_an_answer_or_an_openai_error(batch, raw) -> None:
    with captured_logs() as logs:
        async with gateway_net(request_timeout=2.0) as net, httpx.AsyncClient(
                timeout=15.0) as http:
            url = net.a.gateway_url
            assert url is not None
            for method, path, spec, headers in batch:
                body = spec.render() if isinstance(spec, Deep) else spec
                what = f"{method} {path} {body[:80]!r} {headers}"
                with trio.move_on_after(20) as late:
                    async with http.stream(method, url + path, content=body,
                                           headers=headers) as resp:
                        data = await resp.aread()
                assert not late.cancelled_caught, f"{what}: no answer within 20 s"
                check_answer(resp.status_code, resp.headers, data, what)
            for data in raw:
                answer = await send_raw(url, data)
                if answer:  # (an unfinished request is waited for: the keep-alive ends it)
                    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
                    head, _, rest = answer.partition(b"\r\n\r\n")
                    status = int(head.split(b" ", 2)[1])
                    assert status < 500 and b'"error"' in rest, answer[:300]
            health = await http.get(url + "/health")
            assert health.status_code == 200
    assert not tracebacks(logs)
