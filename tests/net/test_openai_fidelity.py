"""Every OpenAI field honoured end to end, with the official ``openai`` client against a
node's gateway: served locally and offloaded to a peer, over the in-memory overlay and over
real libp2p on loopback, against a recording engine (what arrives is what the user sent,
and what comes back is what the engine answered) and against ``sim-engine``'s HTTP server
(the simulated engine's API: tools, JSON, stop, seed, logprobs, reasoning)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
import pytest
import trio

from markets import Market, market
from recording_engine import MODEL, SERVED, Recording, recording_engine, tool_call_script
from wwwserve.config import (
    GenParams,
)
from wwwserve.engines import SimEngine, get_profile
from wwwserve.engines.http import HTTPEngine
from wwwserve.http.sim_server import SimEngineServer

WAYS = [("memory", "local"), ("memory", "offloaded"), ("libp2p", "local"),
        ("libp2p", "offloaded")]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "today's weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


@asynccontextmanager
async def recorded(world: str, where: str, gen_params: GenParams | None = None
                   ) -> AsyncIterator[tuple[Market, Recording]]:
    async with recording_engine(script=tool_call_script()) as rec, \
            market(world, where, HTTPEngine(rec.url, MODEL, served_model=SERVED,
                                            scrape_interval=0.05), gen_params) as m:
        yield m, rec


@asynccontextmanager
async def simulated(world: str, where: str, **engine: Any) -> AsyncIterator[Market]:
    server = SimEngineServer(SimEngine(get_profile("h100/qwen3-8b"), models=(MODEL,), seed=5,
                                       quality_markers=False, **engine))
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.run)
        async with market(world, where, HTTPEngine(url, MODEL, scrape_interval=0.05)) as m:
            yield m
        nursery.cancel_scope.cancel()


HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "You answer with tools."},
    {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    {"role": "user", "content": "And tomorrow?"},
]
PASSED = {"tools": [WEATHER], "tool_choice": "auto", "parallel_tool_calls": False,
          "stop": ["\n\nUser:"], "seed": 1234, "presence_penalty": 0.25,
          "frequency_penalty": 0.5, "logprobs": True, "top_logprobs": 1,
          "response_format": {"type": "json_schema", "json_schema": {
              "name": "w", "schema": {"type": "object"}}},
          "logit_bias": {"17": -5}, "user": "u-1"}
#: engine-specific fields (SGLang's and vLLM's), which the client sends as extra_body
ENGINE_FIELDS = {"top_k": 7, "chat_template_kwargs": {"enable_thinking": True}}


@pytest.mark.parametrize(("world", "where"), WAYS)
async def test_the_engine_gets_the_request_unchanged_and_the_user_its_answer(
        world: str, where: str) -> None:
    async with recorded(world, where) as (m, rec):
        whole = await m.client.chat.completions.create(
            model=MODEL, messages=HISTORY, max_completion_tokens=40, **PASSED,
            extra_body=ENGINE_FIELDS)
        body = rec.bodies[-1]
        # every field the user sent, unchanged; the history with its tool calls and results
        for key, value in {**PASSED, **ENGINE_FIELDS}.items():
            assert body[key] == value, key
        want = [dict(h) for h in HISTORY]
        want[1]["content"] = "Weather in Paris?"  # text parts arrive joined
        assert body["messages"] == want
        assert body["max_tokens"] == 40 and body["model"] == SERVED
        # nothing injected that the user did not send
        assert "temperature" not in body and "top_p" not in body and "n" not in body
        # the engine's answer, unchanged: its whole answer is what the engine sent
        engine_whole = tool_call_script()[1]
        got = whole.model_dump(exclude_none=True)
        assert got["model"] == SERVED and got["system_fingerprint"] == "fp-engine"
        choice = got["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        expect = engine_whole["choices"][0]
        assert choice["message"] == {k: v for k, v in expect["message"].items() if v is not None}
        assert choice["logprobs"] == expect["logprobs"]
        assert got["usage"]["completion_tokens"] == 9

        # streamed: the same deltas in order (for "auto" where the node serves only MODEL)
        stream = await m.client.chat.completions.create(
            model="auto" if where == "local" else MODEL, messages=HISTORY, stream=True,
            max_tokens=400, **PASSED, extra_body=ENGINE_FIELDS)
        events = [e async for e in stream]
        assert rec.bodies[-1]["stream"] is True
        assert {e.model for e in events} == {SERVED}
        deltas = [e.choices[0].delta for e in events if e.choices]
        thought = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
        assert thought == "Weather, so a tool."
        calls = [c for d in deltas for c in d.tool_calls or ()]
        assert calls[0].id == "call_9" and calls[0].function.name == "get_weather"
        assert "".join(c.function.arguments or "" for c in calls) == '{"city":"Paris"}'
        assert [e.choices[0].finish_reason for e in events if e.choices][-1] == "tool_calls"
        tokens = [t.token for e in events if e.choices and e.choices[0].logprobs
                  for t in e.choices[0].logprobs.content]
        assert tokens == ["a", "b"]


@pytest.mark.parametrize(("world", "where"), WAYS)
async def test_gen_params_are_defaults_the_users_values_win(world: str, where: str) -> None:
    params = GenParams(max_tokens=77, temperature=0.6, top_p=0.9, top_k=20,
                       presence_penalty=0.1)
    async with recorded(world, where, params) as (m, rec):
        await m.client.completions.create(model=MODEL, prompt="once upon")
        body = rec.bodies[-1]
        assert (body["max_tokens"], body["temperature"], body["top_p"], body["top_k"],
                body["presence_penalty"]) == (77, 0.6, 0.9, 20, 0.1)
        await m.client.completions.create(model=MODEL, prompt="once upon", max_tokens=5,
                                          temperature=0.0, extra_body={"top_k": 1})
        body = rec.bodies[-1]
        assert (body["max_tokens"], body["temperature"], body["top_p"], body["top_k"]) == \
            (5, 0.0, 0.9, 1)


@pytest.mark.parametrize(("world", "where"), WAYS)
async def test_a_function_calling_round_trip_on_the_simulated_engine(
        world: str, where: str) -> None:
    async with simulated(world, where) as m:
        messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
        forced = {"type": "function", "function": {"name": "get_weather"}}
        first = await m.client.chat.completions.create(
            model="auto" if where == "local" else MODEL, messages=messages, tools=[WEATHER],
            tool_choice=forced)
        assert first.model == MODEL  # the served model's name, not "auto"
        call = first.choices[0].message.tool_calls[0]
        assert first.choices[0].finish_reason == "tool_calls"
        assert "city" in json.loads(call.function.arguments)
        # the same, streamed: the call arrives as deltas
        stream = await m.client.chat.completions.create(
            model=MODEL, messages=messages, tools=[WEATHER], tool_choice=forced, stream=True)
        pieces = [c for e in [e async for e in stream] if e.choices
                  for c in e.choices[0].delta.tool_calls or ()]
        assert pieces[0].function.name == "get_weather"
        assert json.loads("".join(p.function.arguments or "" for p in pieces))
        # the tool's result goes back in the next turn; the model answers in words
        messages += [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
        second = await m.client.chat.completions.create(
            model=MODEL, messages=messages, tools=[WEATHER], max_tokens=30)
        assert second.choices[0].message.content and not second.choices[0].message.tool_calls


@pytest.mark.parametrize(("world", "where"), WAYS)
async def test_json_stop_seed_logprobs_and_lengths_on_the_simulated_engine(
        world: str, where: str) -> None:
    async with simulated(world, where) as m:
        ask = m.client.chat.completions.create
        msgs: Any = [{"role": "user", "content": "Tell me about a person."}]
        schema = {"type": "object", "properties": {"name": {"type": "string"},
                                                   "age": {"type": "integer"}}}
        doc = await ask(model=MODEL, messages=msgs, response_format={
            "type": "json_schema", "json_schema": {"name": "p", "schema": schema}})
        assert set(json.loads(doc.choices[0].message.content or "")) == {"name", "age"}
        a = await ask(model=MODEL, messages=msgs, seed=9, max_completion_tokens=40)
        b = await ask(model=MODEL, messages=msgs, seed=9, max_completion_tokens=40)
        assert a.choices[0].message.content == b.choices[0].message.content
        assert a.usage is not None and a.usage.completion_tokens <= 40
        text = a.choices[0].message.content or ""
        words = text.split()
        stop = next(w for w in words[2:] if f" {w}" in text[len(words[0]):])
        cut = await ask(model=MODEL, messages=msgs, seed=9, max_completion_tokens=40,
                        stop=[f" {stop}"])
        assert cut.choices[0].finish_reason == "stop"
        assert text.startswith(cut.choices[0].message.content or "")
        assert f" {stop}" not in (cut.choices[0].message.content or "")
        lp = await ask(model=MODEL, messages=msgs, max_tokens=12, logprobs=True,
                       top_logprobs=2)
        content = lp.choices[0].logprobs.content
        assert "".join(t.token for t in content) == lp.choices[0].message.content
        assert all(len(t.top_logprobs) == 2 for t in content)
        short = await ask(model=MODEL, messages=msgs, max_completion_tokens=3,
                          extra_body={"ignore_eos": True})
        assert short.usage is not None and short.usage.completion_tokens == 3
        assert short.choices[0].finish_reason == "length"


@pytest.mark.parametrize(("world", "where"), WAYS)
async def test_reasoning_content_reaches_the_user(world: str, where: str) -> None:
    async with simulated(world, where, reasoning=True) as m:
        msgs: Any = [{"role": "user", "content": "Think, then answer."}]
        whole = await m.client.chat.completions.create(model=MODEL, messages=msgs,
                                                       max_tokens=80)
        message = whole.choices[0].message.model_dump()
        assert message["reasoning_content"] and message["content"]
        stream = await m.client.chat.completions.create(model=MODEL, messages=msgs,
                                                        max_tokens=80, stream=True)
        deltas = [e.choices[0].delta.model_dump() for e in [e async for e in stream]
                  if e.choices]
        assert any(d.get("reasoning_content") for d in deltas)


@pytest.mark.parametrize(("world", "where"), WAYS)
async def test_what_cannot_be_honoured_is_a_400_naming_the_field(
        world: str, where: str) -> None:
    async with recorded(world, where) as (m, rec):
        for kwargs, field in ((
                {"n": 2}, "n"),
                ({"messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "data:,"}}]}]},
                 "messages[0].content"),
                ({"extra_body": {"priority": -10}}, "priority")):
            args: dict[str, Any] = {"model": MODEL,
                                    "messages": [{"role": "user", "content": "hi"}], **kwargs}
            with pytest.raises(openai.BadRequestError) as err:
                await m.client.chat.completions.create(**args)
            assert err.value.body["param"] == field  # type: ignore[index]
        assert rec.calls == 0
