"""The simulated engine speaks the OpenAI API's fields: stop, seed, logprobs, tools,
response_format and reasoning (in virtual time, on the engine itself)."""

from __future__ import annotations

import json
from typing import Any

import trio

from wwwserve.engines import ChatMessage, Chunk, CompletionRequest, SimEngine, get_profile
from wwwserve.http.openai_api import Answer

MODEL = "Qwen/Qwen3-8B"
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"},
                                     "days": {"type": "integer"}},
    "required": ["city"]}}}


def chat(i: str = "r1", *, content: str = "hello there", max_tokens: int | None = 60,
         **extra: Any) -> CompletionRequest:
    return CompletionRequest(request_id=i, model=MODEL, messages=(ChatMessage("user", content),),
                             max_tokens=max_tokens, extra=json.dumps(extra) if extra else "")


async def answer(engine: SimEngine, request: CompletionRequest) -> tuple[Answer, list[Chunk]]:
    whole = Answer()
    chunks: list[Chunk] = []

    async def emit(c: Chunk) -> None:
        chunks.append(c)
        whole.add(c)

    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await engine.generate(request, emit)
        nursery.cancel_scope.cancel()
    return whole, chunks


def engine(**kw: Any) -> SimEngine:
    return SimEngine(get_profile("h100/qwen3-8b"), models=(MODEL,), seed=3,
                     quality_markers=False, **kw)


async def test_stop_cuts_the_answer_before_the_stop_string(autojump_clock) -> None:
    plain, _ = await answer(engine(), chat(max_tokens=200))
    words = plain.text.split()
    stop = next(w for w in words[3:] if words.index(w) >= 3)
    cut, chunks = await answer(engine(), chat(max_tokens=200, stop=[" " + stop]))
    assert cut.text == plain.text[:plain.text.index(" " + stop, len(" ".join(words[:3])))]
    assert cut.finish_reason == "stop" and chunks[-1].usage is not None
    assert len(cut.text) < len(plain.text)


async def test_a_seed_gives_the_same_answer_whatever_the_request_id(autojump_clock) -> None:
    a, _ = await answer(engine(), chat("one", seed=11))
    b, _ = await answer(engine(), chat("two", seed=11))
    c, _ = await answer(engine(), chat("three", seed=12))
    assert a.text == b.text and a.text != c.text
    unseeded = [(await answer(engine(), chat(i)))[0].text for i in ("one", "two")]
    assert unseeded[0] != unseeded[1]


async def test_logprobs_have_the_documented_shapes(autojump_clock) -> None:
    whole, _ = await answer(engine(), chat(logprobs=True, top_logprobs=2))
    content = whole.logprobs["content"]
    assert "".join(e["token"] for e in content) == whole.text
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["logprob"] <= 0 and entry["bytes"] == list(entry["token"].encode())
        assert len(entry["top_logprobs"]) == 2
        assert entry["top_logprobs"][0]["token"] == entry["token"]
    text = CompletionRequest(request_id="t", model=MODEL, prompt="once", max_tokens=30,
                             extra=json.dumps({"logprobs": 3}))
    whole, _ = await answer(engine(), text)
    lp = whole.logprobs
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert "".join(lp["tokens"]) == whole.text
    assert lp["text_offset"][0] == 0 and all(len(t) == 3 for t in lp["top_logprobs"])
    assert [whole.text[o:o + len(t)] for o, t in zip(lp["text_offset"], lp["tokens"],
                                                     strict=True)] == lp["tokens"]
    # not asked, none sent
    assert (await answer(engine(), chat()))[0].logprobs is None


async def test_a_named_tool_choice_gets_a_call_with_arguments_of_its_schema(
        autojump_clock) -> None:
    request = chat(tools=[WEATHER], tool_choice={"type": "function",
                                                 "function": {"name": "get_weather"}})
    whole, chunks = await answer(engine(), request)
    assert whole.finish_reason == "tool_calls" and whole.text == ""
    (call,) = whole.tool_calls
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    args = json.loads(call["function"]["arguments"])
    assert isinstance(args["city"], str) and isinstance(args["days"], int)
    # streamed as deltas: the call's head first, then its arguments in pieces
    deltas = [c.delta_fields()["tool_calls"][0] for c in chunks if c.delta]
    assert deltas[0]["function"]["arguments"] == "" and len(deltas) >= 2
    # tool_choice none: words; auto: a tool call with the configured probability
    assert not (await answer(engine(), chat(tools=[WEATHER], tool_choice="none")))[0].tool_calls
    assert (await answer(engine(tool_call_probability=1.0),
                         chat(tools=[WEATHER])))[0].tool_calls
    assert not (await answer(engine(tool_call_probability=0.0),
                             chat(tools=[WEATHER])))[0].tool_calls


async def test_after_a_tool_result_auto_answers_in_words(autojump_clock) -> None:
    request = CompletionRequest(
        request_id="r", model=MODEL, max_tokens=40,
        messages=(ChatMessage("user", "weather?"),
                  ChatMessage("assistant", None, json.dumps({"tool_calls": [
                      {"id": "call_1", "type": "function",
                       "function": {"name": "get_weather", "arguments": "{}"}}]})),
                  ChatMessage("tool", "sunny", json.dumps({"tool_call_id": "call_1"}))),
        extra=json.dumps({"tools": [WEATHER]}))
    whole, _ = await answer(engine(tool_call_probability=1.0), request)
    assert whole.text and not whole.tool_calls and whole.finish_reason in ("stop", "length")


async def test_response_format_gives_json(autojump_clock) -> None:
    whole, _ = await answer(engine(), chat(response_format={"type": "json_object"}))
    assert isinstance(json.loads(whole.text), dict)
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                               "age": {"type": "integer"},
                                               "tags": {"type": "array",
                                                        "items": {"type": "string"}}}}
    whole, _ = await answer(engine(), chat(response_format={
        "type": "json_schema", "json_schema": {"name": "person", "schema": schema}}))
    doc = json.loads(whole.text)
    assert set(doc) == {"name", "age", "tags"} and isinstance(doc["age"], int)


async def test_a_reasoning_engine_thinks_first_unless_told_not_to(autojump_clock) -> None:
    thinker = engine(reasoning=True)
    whole, chunks = await answer(thinker, chat(max_tokens=100))
    assert whole.fields["reasoning_content"] and whole.text
    first_text = next(i for i, c in enumerate(chunks) if c.text)
    assert all("reasoning_content" in c.delta_fields() for c in chunks[:first_text])
    plain, _ = await answer(engine(reasoning=True),
                            chat(max_tokens=100, chat_template_kwargs={"enable_thinking": False}))
    assert "reasoning_content" not in plain.fields
    assert "reasoning_content" not in (await answer(engine(), chat()))[0].fields


async def test_the_answer_names_the_served_model(autojump_clock) -> None:
    auto = CompletionRequest(request_id="a", model="auto", prompt="x", max_tokens=5)
    whole, chunks = await answer(engine(), auto)
    assert whole.model == MODEL and chunks[0].model == MODEL
    assert all(not c.model for c in chunks[1:])
