"""Identity: persistent keys, peer IDs compatible with libp2p, signatures."""

from __future__ import annotations

import os
import stat

import pytest

from wwwserve.errors import IdentityError
from wwwserve.identity import (
    Identity,
    canonical_bytes,
    load_or_create_identity,
    peer_id_from_public_key,
    public_key_from_peer_id,
    verify,
)


def test_key_file_is_created_0600_and_reused(tmp_path):
    path = tmp_path / "sub" / "node.key"
    first = load_or_create_identity(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = load_or_create_identity(path)
    assert again.peer_id == first.peer_id
    assert first.peer_id.startswith("12D3KooW")


def test_corrupt_key_file_is_an_error_and_left_untouched(tmp_path):
    path = tmp_path / "node.key"
    path.write_bytes(b"not a key at all")
    with pytest.raises(IdentityError, match="corrupt key file"):
        load_or_create_identity(path)
    assert path.read_bytes() == b"not a key at all"


def test_unreadable_key_file_is_an_error(tmp_path):
    path = tmp_path / "node.key"
    path.mkdir()  # a directory where the file should be
    with pytest.raises(IdentityError, match="cannot read key file"):
        load_or_create_identity(path)


def test_peer_id_matches_libp2p():
    from libp2p.crypto.serialization import deserialize_private_key
    from libp2p.peer.id import ID

    ident = Identity.from_seed(bytes(range(32)))
    private = deserialize_private_key(ident.to_libp2p_bytes())
    assert ID.from_pubkey(private.get_public_key()).to_base58() == ident.peer_id
    assert Identity.from_libp2p_bytes(ident.to_libp2p_bytes()).peer_id == ident.peer_id


def test_public_key_round_trips_through_peer_id():
    ident = Identity.generate()
    assert public_key_from_peer_id(ident.peer_id) == ident.public_key
    assert peer_id_from_public_key(ident.public_key) == ident.peer_id
    with pytest.raises(IdentityError):
        public_key_from_peer_id("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")  # RSA-style
    with pytest.raises(IdentityError):
        public_key_from_peer_id("12D3KooW0000000000000000000000000000000000000000000")


def test_sign_and_verify():
    alice, bob = Identity.generate(), Identity.generate()
    data = canonical_bytes({"b": 2, "a": [1, {"y": 1, "x": 2}]})
    sig = alice.sign(data)
    assert verify(alice.peer_id, data, sig)
    assert not verify(bob.peer_id, data, sig)
    assert not verify(alice.peer_id, data + b"x", sig)
    assert not verify(alice.peer_id, data, sig[:-1])
    assert not verify("garbage", data, sig)


def test_canonical_bytes_ignore_key_order():
    assert canonical_bytes({"a": 1, "b": {"c": 1, "d": 2}}) == canonical_bytes(
        {"b": {"d": 2, "c": 1}, "a": 1})
