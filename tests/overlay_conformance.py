"""Overlay conformance suite: the same tests run against every Overlay implementation.

A test module imports these tests and provides an ``overlays`` fixture: an async factory
``make(n)`` returning an async context manager that yields ``n`` started overlays, plus
``kind`` ("memory" or "libp2p"), and a ``clock`` fixture: a ``MockClock`` for virtual time, or
None for the wall clock (pytest-trio only looks for a clock among a test's own arguments).
"""

from __future__ import annotations

import pytest
import trio

from wwwserve.errors import ClosedError, PeerUnavailableError, ProtocolError, RemoteError
from wwwserve.overlay import MAX_GOSSIP_SIZE, PeerEvent, PeerEventKind, ResponseSender

ECHO = "/test/echo/1.0.0"


async def echo_handler(peer: str, request: bytes, sender: ResponseSender) -> None:
    for part in request.split(b"|"):
        await sender.send(part)


async def first_event(events: trio.MemoryReceiveChannel[PeerEvent], kind: PeerEventKind,
                      peer: str) -> None:
    with trio.fail_after(10):
        async for ev in events:
            if ev.kind is kind and ev.peer_id == peer:
                return


async def collect(overlay, peer, protocol, payload, **kw) -> list[bytes]:
    async with overlay.request(peer, protocol, payload, **kw) as resp:
        return [chunk async for chunk in resp]


async def gossip_until_received(sender, receiver_channel, topic, data, *, source):
    """Publish until one copy arrives (GossipSub needs a heartbeat to build its mesh)."""
    with trio.fail_after(15):
        while True:
            await sender.publish(topic, data)
            with trio.move_on_after(0.3):
                msg = await receiver_channel.receive()
                assert msg.data == data
                assert msg.topic == topic
                assert msg.source == source
                return


async def test_identity_and_addresses(overlays, clock):
    async with overlays.make(1) as (a,):
        assert a.peer_id == a.identity.peer_id
        assert a.peer_id.startswith("12D3KooW")
        assert a.addresses
        assert all(addr.endswith("/p2p/" + a.peer_id) for addr in a.addresses)


async def test_connect_emits_events_both_sides(overlays, clock):
    async with overlays.make(2) as (a, b), a.peer_events() as ea, b.peer_events() as eb:
        assert await a.connect(b.addresses[0]) == b.peer_id
        await first_event(ea, PeerEventKind.CONNECTED, b.peer_id)
        await first_event(eb, PeerEventKind.CONNECTED, a.peer_id)
        assert b.peer_id in a.connected_peers()
        assert a.peer_id in b.connected_peers()


async def test_request_streams_chunks_in_order(overlays, clock):
    async with overlays.make(2) as (a, b):
        seen: list[str] = []

        async def handler(peer: str, request: bytes, sender: ResponseSender) -> None:
            seen.append(peer)
            for i in range(20):
                await sender.send(b"%d" % i)

        b.serve(ECHO, handler)
        await a.connect(b.addresses[0])
        assert await collect(a, b.peer_id, ECHO, b"go") == [b"%d" % i for i in range(20)]
        assert seen == [a.peer_id]


async def test_large_payloads_round_trip(overlays, clock):
    async with overlays.make(2) as (a, b):
        b.serve(ECHO, echo_handler)
        await a.connect(b.addresses[0])
        big = bytes(range(256)).replace(b"|", b"-") * 400  # ~100 KB
        assert await collect(a, b.peer_id, ECHO, big) == [big]


async def test_empty_response_and_empty_chunks(overlays, clock):
    async with overlays.make(2) as (a, b):

        async def nothing(peer: str, request: bytes, sender: ResponseSender) -> None:
            return None

        b.serve("/test/nothing/1", nothing)
        b.serve(ECHO, echo_handler)
        await a.connect(b.addresses[0])
        assert await collect(a, b.peer_id, "/test/nothing/1", b"x") == []
        assert await collect(a, b.peer_id, ECHO, b"|") == [b"", b""]


async def test_handler_error_is_remote_error_and_server_survives(overlays, clock):
    async with overlays.make(2) as (a, b):

        async def broken(peer: str, request: bytes, sender: ResponseSender) -> None:
            await sender.send(b"partial")
            raise ValueError("boom")

        b.serve("/test/broken/1", broken)
        b.serve(ECHO, echo_handler)
        await a.connect(b.addresses[0])
        got: list[bytes] = []
        with pytest.raises(RemoteError, match="boom"):
            async with a.request(b.peer_id, "/test/broken/1", b"") as resp:
                async for chunk in resp:
                    got.append(chunk)
        assert got == [b"partial"]
        assert await collect(a, b.peer_id, ECHO, b"still|alive") == [b"still", b"alive"]


async def test_unsupported_protocol_is_remote_error(overlays, clock):
    async with overlays.make(2) as (a, b):
        await a.connect(b.addresses[0])
        with pytest.raises(RemoteError, match="not supported"):
            await collect(a, b.peer_id, "/test/nope/1", b"x")


async def test_leaving_early_cancels_the_handler(overlays, clock):
    async with overlays.make(2) as (a, b):
        finished = trio.Event()
        outcome: list[str] = []

        async def endless(peer: str, request: bytes, sender: ResponseSender) -> None:
            try:
                for _i in range(10_000):
                    await sender.send(b"tick")
                    await trio.sleep(0.01)
                outcome.append("completed")
            except trio.Cancelled:
                outcome.append("cancelled")
                raise
            except PeerUnavailableError:
                outcome.append("requester-left")
                raise
            finally:
                finished.set()

        b.serve("/test/endless/1", endless)
        await a.connect(b.addresses[0])
        async with a.request(b.peer_id, "/test/endless/1", b"") as resp:
            async for _chunk in resp:
                break
        with trio.fail_after(10):
            await finished.wait()
        assert outcome and outcome[0] in ("cancelled", "requester-left")


async def test_idle_timeout_gives_up_on_a_stalled_peer(overlays, clock):
    async with overlays.make(2) as (a, b):

        async def stall(peer: str, request: bytes, sender: ResponseSender) -> None:
            await sender.send(b"first")
            await trio.sleep_forever()

        b.serve("/test/stall/1", stall)
        await a.connect(b.addresses[0])
        with pytest.raises(PeerUnavailableError, match="sent nothing"):
            async with a.request(b.peer_id, "/test/stall/1", b"", idle_timeout=0.5) as resp:
                assert await resp.__anext__() == b"first"
                await resp.__anext__()


async def test_oversized_frames_are_refused(overlays, clock):
    async with overlays.make(2) as (a, b):
        limit = a.max_frame if overlays.kind == "libp2p" else a.network.max_frame

        async def huge(peer: str, request: bytes, sender: ResponseSender) -> None:
            await sender.send(b"x" * (limit + 10))

        b.serve("/test/huge/1", huge)
        await a.connect(b.addresses[0])
        with pytest.raises(ProtocolError, match="exceeds"):
            await collect(a, b.peer_id, ECHO, b"x" * (limit + 1))
        with pytest.raises(RemoteError, match="exceeds"):
            await collect(a, b.peer_id, "/test/huge/1", b"")


async def test_request_dials_on_demand_from_known_addresses(overlays, clock):
    async with overlays.make(2) as (a, b):
        b.serve(ECHO, echo_handler)
        with pytest.raises(PeerUnavailableError):
            await collect(a, b.peer_id, ECHO, b"x")
        a.add_peer_addresses(b.peer_id, b.addresses)
        assert await collect(a, b.peer_id, ECHO, b"x") == [b"x"]


async def test_unreachable_peer_is_peer_unavailable(overlays, clock):
    async with overlays.make(2) as (_a, b):
        gone_addr = b.addresses[0]
    async with overlays.make(1) as (c,):
        with pytest.raises(PeerUnavailableError):
            await c.connect(gone_addr)
        with pytest.raises(PeerUnavailableError):
            await c.connect("/ip4/127.0.0.1/tcp/1/no-peer-id")


async def test_gossip_is_relayed_over_multiple_hops(overlays, clock):
    async with overlays.make(3) as (a, b, c):
        await a.connect(b.addresses[0])
        await b.connect(c.addresses[0])
        async with a.subscribe("t") as sa, b.subscribe("t"), c.subscribe("t") as sc:
            await gossip_until_received(c, sa, "t", b"from-c", source=c.peer_id)
            # own messages are not delivered back
            with trio.move_on_after(0.5):
                msg = await sc.receive()
                pytest.fail(f"publisher received its own message {msg}")


async def test_a_validator_drops_what_it_rejects_and_a_raising_one_rejects(overlays, clock):
    def only_good(data: bytes) -> bool:
        if data == b"boom":
            raise ValueError("a buggy validator")
        return data.startswith(b"good")

    async with overlays.make(3) as (a, b, c):
        await a.connect(b.addresses[0])
        await b.connect(c.addresses[0])
        async with a.subscribe("v", validate=only_good) as sa, \
                b.subscribe("v", validate=only_good), c.subscribe("v"):
            await gossip_until_received(c, sa, "v", b"good-0", source=c.peer_id)
            for data in (b"bad", b"boom", b"good-1"):
                await c.publish("v", data)
            with trio.fail_after(10):
                while (msg := await sa.receive()).data != b"good-1":
                    assert msg.data.startswith(b"good"), msg.data
            with trio.move_on_after(0.5):
                msg = await sa.receive()
                assert msg.data.startswith(b"good"), msg.data


async def test_gossip_burst_of_300_all_arrive(overlays, clock):
    async with overlays.make(2) as (a, b):
        await a.connect(b.addresses[0])
        async with a.subscribe("burst") as sa, b.subscribe("burst"):
            await gossip_until_received(b, sa, "burst", b"warmup", source=b.peer_id)
            # drain duplicates of the warm-up
            with trio.move_on_after(0.5):
                async for msg in sa:
                    assert msg.data == b"warmup"
            for i in range(300):
                await b.publish("burst", b"m%03d" % i)
            got = set()
            with trio.fail_after(20):
                while len(got) < 300:
                    got.add((await sa.receive()).data)
            assert got == {b"m%03d" % i for i in range(300)}


async def test_oversized_gossip_is_refused(overlays, clock):
    async with overlays.make(1) as (a,):
        with pytest.raises(ProtocolError, match="exceeds"):
            await a.publish("t", b"x" * (MAX_GOSSIP_SIZE + 1))


async def test_peer_leaving_disconnects_and_fails_requests(overlays, clock):
    async with overlays.make(1) as (a,), a.peer_events() as ea:
        async with overlays.make(1) as (b,):
            b.serve(ECHO, echo_handler)
            await a.connect(b.addresses[0])
            await first_event(ea, PeerEventKind.CONNECTED, b.peer_id)
            gone = b.peer_id
        await first_event(ea, PeerEventKind.DISCONNECTED, gone)
        assert gone not in a.connected_peers()
        with pytest.raises(PeerUnavailableError):
            await collect(a, gone, ECHO, b"x")


async def test_closed_overlay_refuses_work(overlays, clock):
    async with overlays.make(1) as (a,):
        pass
    with pytest.raises(ClosedError):
        await a.publish("t", b"x")
    with pytest.raises(ClosedError):
        async with a.request(a.peer_id, ECHO, b""):
            pass


async def test_concurrent_requests_are_independent(overlays, clock):
    async with overlays.make(2) as (a, b):
        b.serve(ECHO, echo_handler)
        await a.connect(b.addresses[0])
        results: dict[int, list[bytes]] = {}

        async def one(i: int) -> None:
            results[i] = await collect(a, b.peer_id, ECHO, b"%d|%d" % (i, i * i))

        async with trio.open_nursery() as n:
            for i in range(20):
                n.start_soon(one, i)
        assert results == {i: [b"%d" % i, b"%d" % (i * i)] for i in range(20)}


async def test_requests_beyond_the_concurrency_limit_are_refused_remotely(overlays, clock):
    """Both worlds run one multiplexer: a requester holding ``MAX_INFLIGHT`` requests on a
    peer has the next one refused by that peer, and is served again once they end."""
    from wwwserve.overlay._mux import MAX_INFLIGHT

    async with overlays.make(2) as (a, b):
        release = trio.Event()
        started = 0

        async def hold(peer: str, request: bytes, sender: ResponseSender) -> None:
            nonlocal started
            started += 1
            await sender.send(b"started")
            await release.wait()

        b.serve("/test/hold/1", hold)
        b.serve(ECHO, echo_handler)
        await a.connect(b.addresses[0])
        outcomes: list[str] = []

        async def one() -> None:
            try:
                chunks = await collect(a, b.peer_id, "/test/hold/1", b"")
                outcomes.append("served" if chunks == [b"started"] else repr(chunks))
            except RemoteError as exc:
                outcomes.append("refused" if "too many concurrent" in str(exc) else str(exc))

        async with trio.open_nursery() as n:
            for _ in range(MAX_INFLIGHT):
                n.start_soon(one)
            with trio.fail_after(20):
                while started < MAX_INFLIGHT:
                    await trio.sleep(0.01)
            with pytest.raises(RemoteError, match="too many concurrent"):
                await collect(a, b.peer_id, ECHO, b"one|more")
            release.set()
        assert outcomes == ["served"] * MAX_INFLIGHT
        assert await collect(a, b.peer_id, ECHO, b"again") == [b"again"]
