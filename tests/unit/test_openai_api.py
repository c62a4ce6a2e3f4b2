"""Parsing OpenAI request bodies, building OpenAI response shapes, and the ASGI app driven
without a network."""

from __future__ import annotations

import contextlib
import json

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from wwwserve.engines import ChatMessage, Chunk, Usage
from wwwserve.errors import BadRequestError, NoCapacityError
from wwwserve.http.openai_api import (
    Answer,
    OpenAIApp,
    completion_body,
    error_body,
    parse_completion,
    stream_chunk,
)


def body(**kw: object) -> bytes:
    return json.dumps(kw).encode()


def test_chat_request_is_normalised() -> None:
    p = parse_completion(body(model="m", messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hel"},
                                     {"type": "text", "text": "lo"}]}],
        max_tokens=7, temperature=0.5, stream=True, stream_options={"include_usage": True},
        ignore_eos=True, logit_bias={}, user="x"), chat=True)
    r = p.request
    assert r.messages == (ChatMessage("system", "be brief"), ChatMessage("user", "hello"))
    assert (r.model, r.max_tokens, r.temperature, r.stream, r.ignore_eos) == \
        ("m", 7, 0.5, True, True)
    assert p.include_usage and r.is_chat
    # what the gateway does not act on travels on unchanged
    assert r.extra_fields() == {"logit_bias": {}, "user": "x"}


def test_text_request_and_defaults() -> None:
    p = parse_completion(body(prompt=["once"]), chat=False, timeout=20.0)
    r = p.request
    assert (r.prompt, r.model, r.timeout, r.stream) == ("once", "auto", 20.0, False)
    # nothing the user left out is filled in
    assert (r.max_tokens, r.temperature, r.top_p, r.extra) == (None, None, None, "")
    assert r.planned_tokens == 256
    assert parse_completion(body(prompt="x", max_completion_tokens=5), chat=False
                            ).request.max_tokens == 5


def test_every_other_field_is_passed_through_unchanged() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    fields = {"tools": tools, "tool_choice": "auto", "stop": ["\n\n"], "seed": 7,
              "presence_penalty": 0.5, "logprobs": True, "top_logprobs": 2,
              "response_format": {"type": "json_object"}, "parallel_tool_calls": False,
              "chat_template_kwargs": {"enable_thinking": False}, "top_k": 20}
    history = [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    r = parse_completion(body(messages=history, **fields), chat=True).request
    assert r.extra_fields() == fields
    assert [m.fields() for m in r.messages] == history


@pytest.mark.parametrize(("fields", "match"), [
    ({"request_id": "x"}, "request_id: may not be set"),
    ({"priority": -100}, "priority: may not be set"),
    ({"best_of": 3}, "only best_of=1"),
    ({"use_beam_search": True}, "beam search is not supported"),
    ({"stop": "\ud800"}, "not valid Unicode"),
    ({"tools": "x" * (1024 * 1024 + 1)}, "more than 1048576 bytes"),
])
def test_fields_that_cannot_be_honoured_are_named(fields: dict, match: str) -> None:
    raw = json.dumps({"prompt": "x", **fields}).encode()
    with pytest.raises(BadRequestError, match=match):
        parse_completion(raw, chat=False)


def test_a_peer_cannot_smuggle_acted_fields_in_extra() -> None:
    from wwwserve.engines import CompletionRequest

    for extra in ('{"n": 8}', '{"model": "x"}', '{"priority": -1}', "[1]", "{bad"):
        with pytest.raises(ValueError):
            CompletionRequest(request_id="r", prompt="p", extra=extra)
    with pytest.raises(ValueError):
        ChatMessage("user", "x", '{"role": "system"}')


def test_timeout_extension_is_bounded_by_the_gateway() -> None:
    assert parse_completion(body(prompt="x", timeout=2), chat=False,
                            timeout=10).request.timeout == 2
    with pytest.raises(BadRequestError, match=r"timeout: must be a number in \[0.001, 10\]"):
        parse_completion(body(prompt="x", timeout=60), chat=False, timeout=10)


@pytest.mark.parametrize(("raw", "chat", "match"), [
    (b"{not json", True, "not valid JSON"),
    (b"\xff\xfe", True, "not valid JSON"),
    (b"[1, 2]", True, "must be a JSON object"),
    (body(model=3, messages=[{"role": "user", "content": "x"}]), True, "model: must be"),
    (body(model="m"), True, "messages: must be a non-empty list"),
    (body(messages=[{"content": "x"}]), True, r"messages\[0\]: must be an object"),
    (body(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), True,
     "only text content parts"),
    (body(messages=[{"role": "user", "content": 5}]), True, "must be a string or a list"),
    (body(prompt=["a", "b"]), False, "one prompt per request"),
    (body(prompt="x", max_tokens=0), False, r"max_tokens: must be an integer in \[1,"),
    (body(prompt="x", max_tokens=2.5), False, "max_tokens: must be an integer"),
    (body(prompt="x", max_tokens=True), False, "max_tokens: must be an integer"),
    (body(prompt="x", temperature=3), False, r"temperature: must be a number in \[0, 2\]"),
    (body(prompt="x", top_p="high"), False, "top_p: must be a number"),
    (body(prompt="x", stream="yes"), False, "stream: must be true or false"),
    (body(prompt="x", n=2), False, "only n=1"),
    (body(prompt="x", stream_options=[]), False, "stream_options: must be an object"),
])
def test_bad_bodies_name_the_field(raw: bytes, chat: bool, match: str) -> None:
    with pytest.raises(BadRequestError, match=match):
        parse_completion(raw, chat=chat)


@given(st.binary(max_size=200), st.booleans())
def test_any_bytes_give_a_request_or_bad_request(raw: bytes, chat: bool) -> None:
    with contextlib.suppress(BadRequestError):
        parse_completion(raw, chat=chat)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=10),
       st.booleans())
def test_any_json_gives_a_request_or_bad_request(value: object, chat: bool) -> None:
    raw = json.dumps({"messages": value, "prompt": value, "max_tokens": value,
                      "temperature": value}).encode()
    with contextlib.suppress(BadRequestError):
        parse_completion(raw, chat=chat)


def test_response_shapes() -> None:
    chat = parse_completion(body(model="m", messages=[{"role": "user", "content": "x"}]),
                            chat=True, request_id="r1").request
    answer = Answer()
    answer.add(Chunk(text="h", model="qwen3-8b", fingerprint="fp1"))
    answer.add(Chunk(text="i", finish_reason="length"))
    b = completion_body(chat, answer, Usage(3, 2), 100)
    assert b["object"] == "chat.completion" and b["id"] == "chatcmpl-r1"
    assert b["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
    assert b["choices"][0]["finish_reason"] == "length"
    assert (b["model"], b["system_fingerprint"]) == ("qwen3-8b", "fp1")
    assert b["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    first = stream_chunk(chat, 100, "m", Chunk(text="a"), first=True)
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "a"}
    last = stream_chunk(chat, 100, "m", usage=Usage(1, 1))
    assert last["choices"] == [] and last["usage"]["total_tokens"] == 2
    text = parse_completion(body(prompt="p"), chat=False, request_id="r2").request
    assert stream_chunk(text, 1, "m", Chunk(text="b", finish_reason="stop"))["choices"][0] == {
        "index": 0, "text": "b", "finish_reason": "stop", "logprobs": None}


def test_streamed_tool_calls_and_logprobs_assemble_into_a_whole_answer() -> None:
    chat = parse_completion(body(messages=[{"role": "user", "content": "x"}]),
                            chat=True).request
    head = {"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "f", "arguments": ""}}
    answer = Answer()
    for chunk in (
        Chunk(text="", delta=json.dumps({"reasoning_content": "let me "})),
        Chunk(text="", delta=json.dumps({"reasoning_content": "think"})),
        Chunk(text="", delta=json.dumps({"tool_calls": [head]}),
              logprobs=json.dumps({"content": [{"token": "a", "logprob": -0.1}]})),
        Chunk(text="", delta=json.dumps({"tool_calls": [
            {"index": 0, "function": {"arguments": '{"x":'}}]}),
            logprobs=json.dumps({"content": [{"token": "b", "logprob": -0.2}]})),
        Chunk(text="", delta=json.dumps({"tool_calls": [
            {"index": 0, "function": {"arguments": "1}"}}]}), finish_reason="tool_calls"),
    ):
        answer.add(chunk)
    message = completion_body(chat, answer, Usage(1, 3), 0)["choices"][0]
    assert message["finish_reason"] == "tool_calls"
    assert message["message"] == {
        "role": "assistant", "content": None, "reasoning_content": "let me think",
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "f", "arguments": '{"x":1}'}}]}
    assert [t["token"] for t in message["logprobs"]["content"]] == ["a", "b"]
    # a streamed delta goes out as it came, beside the text
    event = stream_chunk(chat, 0, "m", Chunk(text="", delta=json.dumps({"tool_calls": [head]})))
    assert event["choices"][0]["delta"] == {"tool_calls": [head]}
    assert error_body(503, "busy")["error"]["type"] == "service_unavailable"


# ---- the ASGI app, driven without a network -----------------------------------------------

async def _run_app(app: OpenAIApp, raw: bytes, until: trio.Event) -> list[dict]:
    """Run one chat request through ``app`` until ``until`` is set or the app returns."""
    sent: list[dict] = []
    events = [{"type": "http.request", "body": raw, "more_body": False}]

    async def receive():
        if events:
            return events.pop()
        await trio.sleep_forever()

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": []}
    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            async def run() -> None:
                await app(scope, receive, send)
                until.set()
            nursery.start_soon(run)
            await until.wait()
            nursery.cancel_scope.cancel()
    return sent


STREAMED = body(model="m", messages=[{"role": "user", "content": "x"}], stream=True)


@pytest.mark.parametrize("at_once", [True, False])
async def test_a_stream_starts_with_its_first_chunk_or_at_once(at_once: bool) -> None:
    """A node's gateway starts a stream with its first chunk (a failure before it still
    gets its status); the simulated engine starts at once, as SGLang does."""
    waiting = trio.Event()

    async def generate(request, emit):
        waiting.set()  # the engine has the request, and no token yet
        await trio.sleep_forever()

    app = OpenAIApp(generate, lambda: ["m"], headers_at_once=at_once)
    sent = await _run_app(app, STREAMED, waiting)
    assert [m["type"] for m in sent] == (["http.response.start"] if at_once else [])
    if at_once:
        assert sent[0]["status"] == 200


async def test_an_error_after_the_start_is_an_error_event_with_its_status() -> None:
    async def generate(request, emit):
        raise NoCapacityError("all engines busy", retry_after=1.0)

    for at_once, status in ((False, 503), (True, 200)):
        sent = await _run_app(OpenAIApp(generate, lambda: ["m"], headers_at_once=at_once),
                              STREAMED, trio.Event())
        assert sent[0]["status"] == status
        raw = b"".join(m.get("body", b"") for m in sent[1:])
        if not at_once:
            assert json.loads(raw)["error"]["message"] == "all engines busy"
            continue
        assert raw.startswith(b"data: ") and b"[DONE]" not in raw  # it broke off
        error = json.loads(raw.removeprefix(b"data: "))["error"]
        assert (error["code"], error["message"]) == (503, "all engines busy")
