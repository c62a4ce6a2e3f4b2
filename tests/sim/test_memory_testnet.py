"""wwwserve.testing.MemoryTestnet and the memory_testnet fixture (virtual time)."""

from __future__ import annotations

import logging

import pytest
import trio

from wwwserve.engines import Chunk
from wwwserve.errors import ConfigError, StreamBrokenError
from wwwserve.ledger import UNIT
from wwwserve.log import TraceFilter
from wwwserve.testing import MemoryTestnet


async def test_offloads_are_paid_on_every_replica_of_the_ledger(memory_testnet,
                                                                 autojump_clock):
    async with memory_testnet(3, ledger=True, credit=50.0, accept_frequency=[0.0, 1.0, 1.0],
                              target_token_usage=[0.0, 0.9, 0.9], profile="rtx4090/qwen3-8b"
                              ) as net:
        assert net.book is None and net.genesis is not None
        results = await net.burst(0, 12, max_tokens=100)
        assert [u.completion_tokens for _, u in results] == [100] * 12
        offloaded = net.nodes[0].dispatcher.stats["offloaded"]
        assert offloaded > 0
        await trio.sleep(30)  # payments go into blocks, blocks gossip and finalize
        ledgers = [n.ledger for n in net.nodes]
        assert all(lg is not None for lg in ledgers)
        roots = {lg.chain.state.root() for lg in ledgers}  # type: ignore[union-attr]
        assert len(roots) == 1
        state, me = ledgers[0].chain.state, net.nodes[0].peer_id  # type: ignore[union-attr]
        held = state.balance(me) + state.stake(me) + state.unbonding_total(me)
        assert 50 * UNIT - held == offloaded * UNIT  # one credit per offloaded request


async def test_a_stopped_node_leaves_the_tables_and_comes_back_with_its_identity(
        memory_testnet, autojump_clock):
    async with memory_testnet(3) as net:
        gone = net.nodes[2].peer_id
        net.stop_node(2)
        assert not net.running(2)
        await trio.sleep(net.membership.peer_timeout + 2)
        assert gone not in net.nodes[0].peers and gone not in net.nodes[1].peers
        back = await net.start_node(2)
        assert back.peer_id == gone and net.nodes[2] is back
        await net.wait_converged(30)
        assert gone in net.nodes[0].peers


async def test_the_same_seed_gives_the_same_run(memory_testnet, autojump_clock):
    async def run() -> tuple[list[str], dict[str, int]]:
        async with memory_testnet(3, seed=4, accept_frequency=[0.0, 1.0, 1.0],
                                  target_token_usage=[0.0, 0.9, 0.9]) as net:
            texts = [t for t, _ in await net.burst(0, 6, max_tokens=50)]
            return texts, dict(net.nodes[0].dispatcher.stats)

    assert await run() == await run()


async def test_without_virtual_time_it_says_what_to_do():
    with pytest.raises(ConfigError, match="autojump_clock"):
        async with MemoryTestnet(2):
            pass  # pragma: no cover


def test_per_node_settings_must_match_the_node_count(tmp_path):
    with pytest.raises(ConfigError, match=r"accept_frequency: expected one value per node \(3\)"):
        MemoryTestnet(3, accept_frequency=[1.0, 1.0])
    with pytest.raises(ConfigError, match="data_dir: required with ledger=True"):
        MemoryTestnet(3, ledger=True)


async def test_a_duel_can_be_followed_from_the_request_id_to_the_copy_and_the_judges(
        memory_testnet, autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="wwwserve")
    caplog.handler.addFilter(TraceFilter())
    async with memory_testnet(6, ledger=True, p_inspect=1.0,
                              accept_frequency=[0.0] + [1.0] * 5,
                              target_token_usage=[0.0] + [0.9] * 5) as net:
        await net.nodes[0].complete(net.request("user-req-7", max_tokens=50))
        await trio.sleep(60)  # judges evaluate, commit, reveal; the requester settles

    def logged(trace: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if getattr(r, "trace", None) == trace]

    mine = logged("user-req-7")
    copy_id = next(m.split()[-1] for m in mine if m.startswith("duelled: a copy goes out"))
    duel_id = next(m.split()[1] for m in mine if m.startswith("duel ") and "judges" in m)
    assert any(m.startswith("executed for") for m in logged("user-req-7"))  # first executor
    assert any(m.startswith("executed for") for m in logged(copy_id))  # the copy's executor
    judged = [m for m in logged(f"duel-{duel_id}") if m.startswith("judged for")]
    assert len(judged) == 3  # k_judges, each logging under the duel id
    assert any(m.startswith(f"duel {duel_id}: ") and "majority" in m for m in mine)


async def test_an_executor_crash_mid_stream_is_a_stream_broken_error(memory_testnet,
                                                                     autojump_clock):
    async with memory_testnet(2, accept_frequency=[0.0, 1.0],
                              target_token_usage=[0.0, 0.9]) as net:
        seen: list[int] = []

        async def emit(chunk: Chunk) -> None:
            seen.append(chunk.tokens)
            if len(seen) == 5:
                net.network.crash(net.nodes[1].peer_id)

        with pytest.raises(StreamBrokenError, match="broke off after it had started"):
            await net.nodes[0].submit(net.request("s1", max_tokens=2000, stream=True), emit)
        assert 5 <= len(seen) < 2000 // 8
