"""Real-network faults: SIGKILL an executor mid-stream; the restarted node resumes from disk."""

from __future__ import annotations

import openai
import pytest
import trio

MODEL = "Qwen/Qwen3-8B"


async def test_a_killed_executor_ends_the_stream_with_an_error_and_restarts_from_disk(
        process_testnet) -> None:
    # node0 offloads everything and accepts nothing; node1 is the only node that accepts
    async with process_testnet(3, target_token_usage=[0.0, 0.9, 0.9],
                               accept_frequency=[0.0, 1.0, 0.0], p_inspect=0.0,
                               profiles="rtx3090/qwen3-8b", heartbeat_interval=0.3) as net:
        with trio.fail_after(60):  # blocks are being made (slots of 2 s)
            while (await net.status(1))["ledger"]["height"] < 3:
                await trio.sleep(0.5)
        height_before = (await net.status(1))["ledger"]["height"]
        got: list[str] = []
        async with openai.AsyncOpenAI(base_url=net.nodes[0].gateway + "/v1", api_key="x",
                                      max_retries=0, timeout=60) as client:
            stream = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "a long story"}],
                max_tokens=3000, stream=True, extra_body={"ignore_eos": True})
            with trio.fail_after(30), pytest.raises(openai.APIError) as info:
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        got.append(chunk.choices[0].delta.content)
                        if len(got) == 20:
                            net.kill_node(1)  # SIGKILL the executor mid-answer
            # the answer that already reached the user ends with an explicit error
            assert len(got) >= 20
            assert "executor" in str(info.value)
            # node0 still serves: with node1 gone and node2 refusing, it queues locally
            r = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                extra_body={"ignore_eos": True})
            assert r.usage is not None and r.usage.completion_tokens == 8
        await net.restart_node(1)
        status = await net.status(1)
        assert status["peer_id"] == net.nodes[1].peer_id  # same key
        assert status["ledger"]["stats"]["blocks_loaded"] >= height_before  # from its disk
        assert status["ledger"]["height"] >= height_before
