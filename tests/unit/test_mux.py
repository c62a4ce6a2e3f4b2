"""The request multiplexer of the libp2p overlay, over in-memory byte streams."""

from __future__ import annotations

import contextlib

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from wwwserve.errors import PeerUnavailableError, ProtocolError, RemoteError
from wwwserve.overlay import ResponseSender
from wwwserve.overlay._mux import (
    MuxClient,
    ReceiveBudget,
    decode_mux,
    decode_open,
    encode_mux,
    encode_open,
    serve_mux_stream,
)


class Adapter:
    """A trio stream dressed as a libp2p stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream

    async def read(self, n: int | None = -1) -> bytes:
        return await self.stream.receive_some(65536)

    async def write(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def close(self) -> None:
        await self.stream.aclose()

    async def reset(self) -> None:
        await self.stream.aclose()


@given(st.binary(max_size=64))
def test_decoders_raise_only_protocol_error(data: bytes) -> None:
    for decoder in (decode_mux, decode_open):
        with contextlib.suppress(ProtocolError):
            decoder(data)


def test_open_round_trip() -> None:
    record = encode_mux(b"O", 7, encode_open("/p/1", b"payload"), 1 << 20)
    kind, rid, body = decode_mux(record[4:])
    assert (kind, rid, decode_open(body)) == (b"O", 7, ("/p/1", b"payload"))


async def serve_pair(handlers, nursery, max_inflight=256):
    left, right = trio.testing.memory_stream_pair()
    nursery.start_soon(lambda: serve_mux_stream(
        Adapter(right), "server-peer-id", handlers.get, max_frame=1 << 20,
        write_timeout=5, max_inflight=max_inflight))
    client = MuxClient(Adapter(left), "server-peer-id", max_frame=1 << 20, write_timeout=5)
    nursery.start_soon(client.run)
    return client


async def collect(client: MuxClient, proto: str, payload: bytes) -> list[bytes]:
    async with client.request(proto, payload, idle_timeout=5) as resp:
        return [c async for c in resp]


async def test_interleaved_requests_and_cancel() -> None:
    started = trio.Event()
    cancelled = trio.Event()

    async def slow(peer: str, req: bytes, sender: ResponseSender) -> None:
        try:
            started.set()
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.set()
            raise

    async def echo(peer: str, req: bytes, sender: ResponseSender) -> None:
        for part in req.split(b"|"):
            await sender.send(part)

    async with trio.open_nursery() as n:
        client = await serve_pair({"/slow": slow, "/echo": echo}, n)
        async with client.request("/slow", b"", idle_timeout=5):
            await started.wait()
            # another request passes the stalled one on the same stream
            assert await collect(client, "/echo", b"a|b") == [b"a", b"b"]
        with trio.fail_after(1):
            await cancelled.wait()  # leaving early cancelled the handler remotely
        with pytest.raises(RemoteError, match="not supported"):
            await collect(client, "/nope", b"")
        n.cancel_scope.cancel()


async def test_inflight_limit_refuses_extra_requests() -> None:
    async def hang(peer: str, req: bytes, sender: ResponseSender) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as n:
        client = await serve_pair({"/hang": hang}, n, max_inflight=2)
        async with client.request("/hang", b"", idle_timeout=5), \
                client.request("/hang", b"", idle_timeout=5):
            with pytest.raises(RemoteError, match="too many"):
                await collect(client, "/hang", b"")
        n.cancel_scope.cancel()


async def test_stream_death_fails_pending_requests() -> None:
    async def hang(peer: str, req: bytes, sender: ResponseSender) -> None:
        await sender.send(b"first")
        await trio.sleep_forever()

    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as n:
        n.start_soon(lambda: serve_mux_stream(
            Adapter(right), "s", {"/hang": hang}.get, max_frame=1 << 20, write_timeout=5))
        client = MuxClient(Adapter(left), "s", max_frame=1 << 20, write_timeout=5)
        n.start_soon(client.run)
        with pytest.raises(PeerUnavailableError, match="lost"):
            async with client.request("/hang", b"", idle_timeout=5) as resp:
                assert await resp.__anext__() == b"first"
                await right.aclose()  # the server's side of the connection dies
                await resp.__anext__()
        assert client.broken
        n.cancel_scope.cancel()


async def test_a_frame_left_unfinished_is_dropped_after_the_partial_timeout(
        autojump_clock) -> None:
    """A peer that sends the start of a frame and then nothing holds its bytes for at most
    ``partial_timeout``: then the stream is reset and the budget is whole again."""
    budget = ReceiveBudget(limit=1 << 20)
    left, right = trio.testing.memory_stream_pair()
    ended = trio.Event()

    async def serve() -> None:
        await serve_mux_stream(Adapter(right), "p", {}.get, max_frame=1 << 20,
                               write_timeout=5, budget=budget, partial_timeout=30.0)
        ended.set()

    async with trio.open_nursery() as n:
        n.start_soon(serve)
        start = trio.current_time()
        await left.send_all((100_000).to_bytes(4, "big") + b"O" + b"\0" * 50_000)
        await trio.sleep(1)
        assert budget.held == 50_005  # the header too
        await ended.wait()
        assert trio.current_time() - start == pytest.approx(30.0, abs=1.0)
        assert budget.held == 0
        n.cancel_scope.cancel()


async def test_a_stream_that_keeps_frames_flowing_is_never_timed_out(autojump_clock) -> None:
    """Reads that end inside a frame are normal on a busy stream: only a frame that takes
    longer than the timeout from its own first byte ends the stream."""
    seen: list[bytes] = []

    async def note(peer: str, req: bytes, sender: ResponseSender) -> None:
        seen.append(req)

    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as n:
        n.start_soon(lambda: serve_mux_stream(
            Adapter(right), "p", {"/n": note}.get, max_frame=1 << 20, write_timeout=5,
            partial_timeout=5.0))
        record = encode_mux(b"O", 1, encode_open("/n", b"x" * 100), 1 << 20)
        for i in range(60):  # a minute of traffic, every read ending mid-frame
            rec = record[:5] + (i + 1).to_bytes(4, "big") + record[9:]
            await left.send_all(rec[:50])
            await trio.sleep(1)
            await left.send_all(rec[50:])
        await trio.sleep(1)
        assert len(seen) == 60
        n.cancel_scope.cancel()


async def test_unfinished_frames_of_all_streams_share_one_budget() -> None:
    """Streams that together would hold more than the budget in unfinished frames are
    reset (the one that would pass it), the others are unharmed."""
    budget = ReceiveBudget(limit=250_000)
    ended: list[int] = []

    async def serve(k: int, stream: trio.abc.Stream) -> None:
        await serve_mux_stream(Adapter(stream), f"p{k}", {}.get, max_frame=1 << 20,
                               write_timeout=5, budget=budget)
        ended.append(k)

    async with trio.open_nursery() as n:
        lefts = []
        for k in range(3):
            left, right = trio.testing.memory_stream_pair()
            lefts.append(left)
            n.start_soon(serve, k, right)
        for left in lefts:
            await left.send_all((500_000).to_bytes(4, "big") + b"O" + b"\0" * 99_999)
            await trio.sleep(0.1)
        assert ended == [2]
        assert budget.held == 200_008 and budget.refused == 1
        n.cancel_scope.cancel()
