"""Engine failures as a user meets them, through a node's gateway (real HTTP on loopback,
an in-memory overlay in real time): a failing engine is retried a handful of times with
backoff, never in a storm, and the user gets the engine's verdict."""

from __future__ import annotations

import pytest
import trio

from recording_engine import node_in_front_of, recording_engine

MODEL = "Qwen/Qwen3-8B"
#: the most times one request may reach a failing engine
MAX_CALLS = 5


def chat(stream: bool = False, content: str = "hello") -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}],
            "max_tokens": 4, "stream": stream, "timeout": 20}


@pytest.mark.parametrize("stream", [False, True])
async def test_an_engine_answering_429_is_called_a_handful_of_times_and_its_429_reaches_the_user(
        stream: bool) -> None:
    async with recording_engine(status=429, reply_headers=[("retry-after", "1")],
                                message="too many requests, slow down") as rec, \
            node_in_front_of(rec) as client:
        with trio.fail_after(15):
            resp = await client.post("/v1/chat/completions", json=chat(stream))
        assert resp.status_code == 429, resp.text
        assert resp.headers["retry-after"] == "1"
        assert "slow down" in resp.json()["error"]["message"]
        assert 1 <= rec.calls <= MAX_CALLS


async def test_an_engine_answering_500_gives_a_502_with_its_reason_after_a_few_calls() -> None:
    async with recording_engine(status=500, message="CUDA out of memory") as rec, \
            node_in_front_of(rec) as client:
        with trio.fail_after(15):
            resp = await client.post("/v1/chat/completions", json=chat())
        assert resp.status_code == 502, resp.text
        assert "CUDA out of memory" in resp.json()["error"]["message"]
        assert "Error" not in resp.json()["error"]["message"].split(":")[0]
        assert 1 <= rec.calls <= MAX_CALLS


async def test_text_no_engine_can_be_sent_is_a_400_at_once() -> None:
    async with recording_engine() as rec, node_in_front_of(rec) as client:
        raw = b'{"model": "%s", "messages": [{"role": "user", "content": "\\ud800"}]}' \
            % MODEL.encode()
        with trio.fail_after(5):
            resp = await client.post("/v1/chat/completions", content=raw,
                                     headers={"content-type": "application/json"})
        assert resp.status_code == 400
        assert "messages[0].content" in resp.json()["error"]["message"]
        assert rec.calls == 0


async def test_a_failing_local_engine_fails_over_to_a_healthy_peer() -> None:
    async with recording_engine(status=500) as rec, node_in_front_of(rec, peer=True) as client:
        with trio.fail_after(15):
            resp = await client.post("/v1/chat/completions", json=chat())
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"]
        assert 1 <= rec.calls <= MAX_CALLS
