"""Hostile bytes on every protocol a libp2p host parses: the host stays up.

py-libp2p 0.8.1 runs its stream handlers (pubsub's RPC reader, identify, ping, ours) and
pubsub's message tasks without a guard: six bytes on ``/meshsub/1.1.0`` (a length of 5,
then 0xFF five times) once made the whole process exit with a protobuf DecodeError. Each
test here sends a stranger's bytes to a real :class:`Libp2pOverlay` on loopback and checks
that it still relays gossip to an honest peer, and that the offender's connection was
closed.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.utils.varint import encode_uvarint

from log_capture import captured_logs, tracebacks
from wwwserve.identity import Identity
from wwwserve.overlay import Libp2pOverlay

TOPIC = "/wwwserve/test/hostile/1"
PROTOCOLS = ("/meshsub/1.1.0", "/meshsub/1.0.0", "/ipfs/id/push/1.0.0", "/ipfs/id/1.0.0",
             "/ipfs/ping/1.0.0", "/wwwserve/mux/1.0.0")


async def still_relays(victim: Libp2pOverlay, honest_inbox, honest: Libp2pOverlay) -> None:
    """The victim is up: a message it publishes reaches the honest peer."""
    with trio.fail_after(10):
        while True:
            await victim.publish(TOPIC, b"still here")
            with trio.move_on_after(0.5):
                msg = await honest_inbox.receive()
                assert msg.data == b"still here"
                return


async def attack(victim: Libp2pOverlay, protocol: str, writes: list[bytes]) -> None:
    """A fresh stranger dials the victim and writes ``writes`` on a ``protocol`` stream."""
    async with Libp2pOverlay(Identity.generate()) as stranger:
        await stranger.connect(victim.addresses[0])
        try:
            stream = await stranger.host.new_stream(ID.from_base58(victim.peer_id),
                                                    [TProtocol(protocol)])
            for data in writes:
                await stream.write(data)
            await trio.sleep(0.2)
        except Exception:  # the victim may reset the stream or close the connection first
            pass


async def test_six_bytes_on_meshsub_do_not_take_the_host_down(caplog):
    async with AsyncExitStack() as stack:
        victim = await stack.enter_async_context(Libp2pOverlay(Identity.generate()))
        honest = await stack.enter_async_context(Libp2pOverlay(Identity.generate()))
        await stack.enter_async_context(victim.subscribe(TOPIC))
        inbox = await stack.enter_async_context(honest.subscribe(TOPIC))
        await honest.connect(victim.addresses[0])
        await attack(victim, "/meshsub/1.1.0", [b"\x05" + b"\xff" * 5])
        await still_relays(victim, inbox, honest)
        assert victim.offenders.counts == {"stream:/meshsub/1.1.0": 1}
        assert honest.peer_id in victim.connected_peers()
    assert not [r for r in caplog.records if r.exc_info]  # one warning line, no traceback


def rpc_strategy() -> st.SearchStrategy[bytes]:
    """Well-framed pubsub RPCs with arbitrary contents (ids, topics, control messages)."""
    blob = st.binary(max_size=48)
    topic = st.sampled_from([TOPIC, "", "x" * 300, "\u00ff"])

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        rpc = rpc_pb2.RPC()
        for _ in range(draw(st.integers(0, 2))):
            rpc.subscriptions.add(subscribe=draw(st.booleans()), topicid=draw(topic))
        for _ in range(draw(st.integers(0, 2))):
            m = rpc.publish.add()
            m.from_id, m.data, m.seqno = draw(blob), draw(blob), draw(blob)
            m.topicIDs.extend(draw(st.lists(topic, max_size=2)))
            m.signature, m.key = draw(blob), draw(blob)
        if draw(st.booleans()):
            c = rpc.control
            c.ihave.add(topicID=draw(topic), messageIDs=draw(st.lists(blob, max_size=3)))
            c.iwant.add(messageIDs=draw(st.lists(blob, max_size=3)))
            c.graft.add(topicID=draw(topic))
            prune = c.prune.add(topicID=draw(topic),
                                backoff=draw(st.integers(0, 2**64 - 1)))
            prune.peers.add(peerID=draw(blob), signedPeerRecord=draw(blob))
        if draw(st.booleans()):
            rpc.senderRecord = draw(blob)
        data = rpc.SerializeToString()
        return encode_uvarint(len(data)) + data

    return build()


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(protocol=st.sampled_from(PROTOCOLS),
       writes=st.lists(st.one_of(rpc_strategy(), st.binary(min_size=1, max_size=200)),
                       min_size=1, max_size=4))
async def test_any_bytes_on_any_protocol_leave_the_host_up(protocol, writes):
    with captured_logs() as logs:
        async with AsyncExitStack() as stack:
            victim = await stack.enter_async_context(Libp2pOverlay(Identity.generate()))
            honest = await stack.enter_async_context(Libp2pOverlay(Identity.generate()))
            await stack.enter_async_context(victim.subscribe(TOPIC))
            inbox = await stack.enter_async_context(honest.subscribe(TOPIC))
            await honest.connect(victim.addresses[0])
            await attack(victim, protocol, writes)
            await still_relays(victim, inbox, honest)
            assert victim.receive_budget_in.held == 0
    assert not tracebacks(logs)
