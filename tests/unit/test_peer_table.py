"""PeerTable, the sans-IO membership state machine: every transition and every rejection."""

from __future__ import annotations

from dataclasses import replace

import pytest

from wwwserve.config import MembershipParams
from wwwserve.identity import Identity
from wwwserve.membership import (
    Goodbye,
    Heartbeat,
    MembershipEventKind,
    ModelLoad,
    PeerStatus,
    PeerTable,
)
from wwwserve.wire import Signed, decode, encode, seal

NET = "testnet"
WALL = 1_800_000_000.0
PARAMS = MembershipParams(heartbeat_interval=1.0, suspect_timeout=2.5, peer_timeout=5.0,
                          max_heartbeat_age=30.0)
ME = Identity.from_seed(b"\x01" * 32)
ALICE = Identity.from_seed(b"\x02" * 32)
MALLORY = Identity.from_seed(b"\x03" * 32)


def hb(ident: Identity = ALICE, *, inc: int = 1, seq: int = 1, ts: float = WALL,
       network: str = NET, signer: Identity | None = None, **kw) -> bytes:
    msg = Heartbeat(network_id=network, peer_id=ident.peer_id, incarnation=inc, seq=seq,
                    timestamp=ts, addresses=(f"/memory/1/p2p/{ident.peer_id}",), **kw)
    return encode(seal(msg, signer or ident))


def bye(ident: Identity = ALICE, *, inc: int = 1, seq: int = 2,
        signer: Identity | None = None) -> bytes:
    msg = Goodbye(network_id=NET, peer_id=ident.peer_id, incarnation=inc, seq=seq,
                  timestamp=WALL)
    return encode(seal(msg, signer or ident))


@pytest.fixture
def table() -> PeerTable:
    return PeerTable(local_peer_id=ME.peer_id, network_id=NET, params=PARAMS)


def kinds(events) -> list[MembershipEventKind]:
    return [e.kind for e in events]


def feed(table: PeerTable, data: bytes, *, now: float, source: str = ALICE.peer_id):
    return table.receive(data, source=source, now=now, wall_now=WALL + now)


def test_join_update_and_state_carried(table):
    load = (ModelLoad("Qwen/Qwen3-8B", 0.4, 3, 1),)
    assert kinds(feed(table, hb(models=load, stake=5.0, credit=90.0), now=0)) == [
        MembershipEventKind.JOINED]
    info = table.peers[ALICE.peer_id]
    assert (info.models, info.stake, info.credit, info.status) == (load, 5.0, 90.0,
                                                                   PeerStatus.ALIVE)
    assert kinds(feed(table, hb(seq=2, ts=WALL + 1), now=1)) == [MembershipEventKind.UPDATED]
    assert table.peers[ALICE.peer_id].last_seen == 1
    assert table.peers[ALICE.peer_id].first_seen == 0


def test_silent_peer_is_suspected_then_removed(table):
    feed(table, hb(), now=0)
    assert table.tick(2.4) == []
    assert kinds(table.tick(2.5)) == [MembershipEventKind.SUSPECTED]
    assert table.peers[ALICE.peer_id].status is PeerStatus.SUSPECT
    assert table.tick(4.9) == []
    assert kinds(table.tick(5.0)) == [MembershipEventKind.LEFT]
    assert ALICE.peer_id not in table.peers


def test_suspect_peer_recovers_on_heartbeat(table):
    feed(table, hb(), now=0)
    table.tick(3)
    assert kinds(feed(table, hb(seq=2, ts=WALL + 3), now=3)) == [MembershipEventKind.RECOVERED]
    assert table.peers[ALICE.peer_id].status is PeerStatus.ALIVE


def test_restart_with_new_incarnation_is_readmitted(table):
    feed(table, hb(inc=1, seq=40), now=0)
    table.tick(10)  # removed
    assert kinds(feed(table, hb(inc=2, seq=1, ts=WALL + 11), now=11)) == [
        MembershipEventKind.REJOINED]
    # a restart noticed before the timeout is a rejoin too
    assert kinds(feed(table, hb(inc=3, seq=1, ts=WALL + 12), now=12)) == [
        MembershipEventKind.REJOINED]


def test_replayed_heartbeat_is_ignored_and_counted(table):
    msg = hb(seq=7)
    feed(table, msg, now=0)
    assert feed(table, msg, now=0.5) == []
    assert table.rejected["replayed"] == 1


def test_older_heartbeat_is_stale(table):
    feed(table, hb(seq=7), now=0)
    assert feed(table, hb(seq=6), now=1) == []
    assert feed(table, hb(inc=0, seq=99), now=1) == []
    assert table.rejected["stale"] == 2


def test_replay_after_removal_cannot_resurrect(table):
    old = hb(seq=3)
    feed(table, old, now=0)
    table.tick(6)
    assert feed(table, old, now=7) == []
    assert ALICE.peer_id not in table.peers
    assert table.rejected["replayed"] == 1


def test_forged_signature_is_rejected(table):
    assert feed(table, hb(signer=MALLORY), now=0) == []
    env = decode(hb(), expect=Signed)
    body = encode(replace(decode(env.body), stake=1e9))  # changed after signing
    assert feed(table, encode(replace(env, body=body)), now=0) == []
    assert feed(table, encode(replace(env, signature=b"\0" * 64)), now=0) == []
    assert table.rejected["forged"] == 3
    assert not table.peers


def test_malformed_and_unexpected_payloads_are_counted(table):
    assert feed(table, b"\xc1garbage", now=0) == []
    assert feed(table, b"", now=0) == []
    env = decode(hb(), expect=Signed)
    assert feed(table, encode(replace(env, body=b"\x93\x01")), now=0) == []
    inner = seal(decode(hb(), expect=Signed), ALICE)  # an envelope inside an envelope
    assert feed(table, encode(inner), now=0) == []
    assert table.rejected["malformed"] == 3
    assert table.rejected["unexpected_type"] == 1


def test_heartbeat_relayed_by_another_peer_is_rejected(table):
    assert feed(table, hb(), now=0, source=MALLORY.peer_id) == []
    assert table.rejected["forged"] == 1


def test_timestamp_far_from_our_clock_is_stale(table):
    assert feed(table, hb(ts=WALL - 31), now=0) == []
    assert feed(table, hb(seq=2, ts=WALL + 31), now=0) == []
    assert table.rejected["stale"] == 2


def test_other_network_and_self_are_ignored(table):
    assert feed(table, hb(network="othernet"), now=0) == []
    assert feed(table, hb(ME), now=0, source=ME.peer_id) == []
    assert table.rejected["foreign_network"] == 1
    assert table.rejected["self"] == 1


def test_goodbye_removes_at_once_and_blocks_older_heartbeats(table):
    feed(table, hb(seq=1), now=0)
    assert kinds(feed(table, bye(seq=2), now=0.5)) == [MembershipEventKind.LEFT]
    assert feed(table, hb(seq=1), now=0.6) == []
    assert ALICE.peer_id not in table.peers


def test_forged_goodbye_cannot_evict(table):
    feed(table, hb(seq=1), now=0)
    assert feed(table, bye(signer=MALLORY), now=0.5) == []
    assert ALICE.peer_id in table.peers


def test_table_is_bounded():
    small = PeerTable(local_peer_id=ME.peer_id, network_id=NET, params=PARAMS, max_peers=1)
    feed(small, hb(ALICE), now=0)
    assert feed(small, hb(MALLORY), now=0, source=MALLORY.peer_id) == []
    assert small.rejected["table_full"] == 1


def test_tombstones_expire(table):
    feed(table, hb(seq=1), now=0)
    table.tick(5)
    assert table._tombstones
    table.tick(5 + PARAMS.max_heartbeat_age + PARAMS.peer_timeout)
    assert not table._tombstones


@pytest.mark.parametrize("claims", [
    {"stake": 1e300}, {"credit": -1e300}, {"stake": -1.0},
    {"models": tuple(ModelLoad(f"m{i}", 0.1, 0, 0) for i in range(201))},
    {"models": (ModelLoad("m", 7.0, 0, 0),)}, {"models": (ModelLoad("m", 0.5, -1, 0),)},
    {"models": (ModelLoad("", 0.5, 0, 0),)}, {"models": (ModelLoad("m" * 300, 0.5, 0, 0),)},
    {"policy": {"accept_frequency": 1e300}},
    {"policy": {f"k{i}": 0.5 for i in range(40)}},
    {"addresses": (f"/memory/1/p2p/{MALLORY.peer_id}",)},  # someone else's address
    {"addresses": tuple(f"/memory/{i}/p2p/{ALICE.peer_id}" for i in range(20))},
], ids=lambda c: next(iter(c)))
def test_heartbeats_with_values_out_of_range_are_rejected_and_not_relayed(table, claims):
    addresses = claims.pop("addresses", None)
    msg = Heartbeat(network_id=NET, peer_id=ALICE.peer_id, incarnation=1, seq=1,
                    timestamp=WALL,
                    addresses=addresses or (f"/memory/1/p2p/{ALICE.peer_id}",), **claims)
    data = encode(seal(msg, ALICE))
    assert not table.valid(data)  # the gossip validator: not relayed
    assert feed(table, data, now=0) == []
    assert table.rejected == {"out_of_range": 1}
    assert ALICE.peer_id not in table.peers


def test_the_validator_takes_good_heartbeats_and_refuses_garbage(table):
    assert table.valid(hb(models=(ModelLoad("Qwen/Qwen3-8B", 0.4, 3, 1),), stake=5.0))
    assert table.valid(bye())
    assert not table.valid(b"\x93garbage")
    assert not table.valid(hb(network="elsewhere"))
    assert not table.valid(hb(signer=MALLORY))  # signed by someone else
