"""Node identity: a persistent Ed25519 keypair whose libp2p peer ID is the node's only name.

The key file uses libp2p's own serialization (a ``PrivateKey`` protobuf: key type Ed25519 and
the 32-byte seed), so a key made here is readable by ``libp2p.identity_utils.load_identity``
and the reverse. Peer IDs are computed here without importing libp2p: an Ed25519 public key is
small enough that libp2p inlines it in the peer ID (an *identity* multihash), which means
anyone can verify a signature knowing only the signer's peer ID.

Protocol code signs and verifies with ``Identity.sign()`` and ``verify()``, always over
canonical bytes (see ``canonical_bytes()``).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
)

from .errors import IdentityError

__all__ = [
    "Identity",
    "canonical_bytes",
    "load_or_create_identity",
    "peer_id_from_public_key",
    "public_key_from_peer_id",
    "verify",
]

logger = logging.getLogger(__name__)

_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_ALPHABET_INDEX = {c: i for i, c in enumerate(_ALPHABET)}
# protobuf of libp2p's PublicKey / PrivateKey {Type: Ed25519 (1), Data: <32 bytes>}
_ED25519_PROTO_PREFIX = b"\x08\x01\x12\x20"
# identity multihash (code 0x00) of a 36-byte key protobuf
_IDENTITY_MULTIHASH_PREFIX = b"\x00\x24"
SIGNATURE_SIZE = 64


def _b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, rem = divmod(n, 58)
        out.append(_ALPHABET[rem])
    pad = len(data) - len(data.lstrip(b"\x00"))
    return "1" * pad + "".join(reversed(out))


def _b58decode(text: str) -> bytes:
    n = 0
    for ch in text:
        try:
            n = n * 58 + _ALPHABET_INDEX[ch]
        except KeyError:
            raise IdentityError(f"invalid base58 character {ch!r} in peer ID") from None
    pad = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\x00" * pad + body


def peer_id_from_public_key(public_key: bytes) -> str:
    """Return the libp2p peer ID (``12D3KooW...``) of a raw 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise IdentityError(f"an Ed25519 public key has 32 bytes, got {len(public_key)}")
    return _b58encode(_IDENTITY_MULTIHASH_PREFIX + _ED25519_PROTO_PREFIX + public_key)


def public_key_from_peer_id(peer_id: str) -> bytes:
    """Extract the raw Ed25519 public key inlined in a peer ID.

    Raises ``IdentityError`` if ``peer_id`` is not the peer ID of an Ed25519 key.
    """
    if not isinstance(peer_id, str) or not 40 <= len(peer_id) <= 60:
        raise IdentityError(f"not an Ed25519 peer ID: {peer_id!r}")
    return _public_key_cached(peer_id)


@functools.lru_cache(maxsize=4096)
def _public_key_cached(peer_id: str) -> bytes:
    # a network has few accounts, each seen in many messages: decode each peer ID once
    raw = _b58decode(peer_id)
    prefix = _IDENTITY_MULTIHASH_PREFIX + _ED25519_PROTO_PREFIX
    if len(raw) != len(prefix) + 32 or not raw.startswith(prefix):
        raise IdentityError(f"not an Ed25519 peer ID: {peer_id!r}")
    return raw[len(prefix) :]


def canonical_bytes(obj: Any) -> bytes:
    """Deterministic bytes of a msgpack-able value, for signing and hashing.

    Maps are encoded with sorted keys at every depth, so two processes that build the same
    value in a different order get the same bytes.
    """

    def norm(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: norm(value[k]) for k in sorted(value)}
        if isinstance(value, list | tuple):
            return [norm(v) for v in value]
        return value

    try:
        return msgpack.packb(norm(obj), use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise IdentityError(f"value cannot be encoded canonically: {exc}") from None


def verify(peer_id: str, data: bytes, signature: bytes) -> bool:
    """True if ``signature`` is the signature of ``data`` by the key behind ``peer_id``.

    Never raises for malformed input from the network: a bad peer ID or a signature of the
    wrong size simply does not verify.
    """
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
        return False
    if not isinstance(data, bytes) or not isinstance(peer_id, str):
        return False
    return _verify_cached(peer_id, data, signature)


@functools.lru_cache(maxsize=4096)
def _verifier(peer_id: str) -> nacl.signing.VerifyKey:
    """The loaded public key of ``peer_id`` (raises IdentityError or a nacl error).

    Verification uses libsodium (PyNaCl): on the 2-core CI machine it checks ~1.7x more
    signatures per second than OpenSSL through ``cryptography``, and signature checks are
    most of the ledger's validation time.
    """
    return nacl.signing.VerifyKey(public_key_from_peer_id(peer_id))


@functools.lru_cache(maxsize=8192)
def _verify_cached(peer_id: str, data: bytes, signature: bytes) -> bool:
    # Keyed on the exact (signer, bytes, signature): a hit is the same check's answer. Gossip
    # delivers one message to a node more than once, and a simulation to many nodes.
    try:
        _verifier(peer_id).verify(data, signature)
    except (IdentityError, nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Identity:
    """An Ed25519 keypair and the peer ID derived from it."""

    private_key: Ed25519PrivateKey = field(repr=False)
    public_key: bytes
    peer_id: str

    @classmethod
    def generate(cls) -> Identity:
        """Make a fresh random identity (kept in memory only)."""
        return cls.from_private_key(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Identity from a 32-byte seed; deterministic, for simulations and tests."""
        if len(seed) != 32:
            raise IdentityError(f"an Ed25519 seed has 32 bytes, got {len(seed)}")
        return cls.from_private_key(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def from_private_key(cls, key: Ed25519PrivateKey) -> Identity:
        """Wrap an existing ``cryptography`` Ed25519 private key."""
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return cls(private_key=key, public_key=public, peer_id=peer_id_from_public_key(public))

    def seed(self) -> bytes:
        """The 32-byte private seed. Handle with care."""
        return self.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def to_libp2p_bytes(self) -> bytes:
        """The private key in libp2p's protobuf serialization (the key file format)."""
        return _ED25519_PROTO_PREFIX + self.seed()

    @classmethod
    def from_libp2p_bytes(cls, data: bytes) -> Identity:
        """Parse libp2p's private-key protobuf (32-byte seed or 64-byte seed+public key)."""
        if data.startswith(_ED25519_PROTO_PREFIX) and len(data) == 36:
            return cls.from_seed(data[4:])
        if data.startswith(b"\x08\x01\x12\x40") and len(data) == 68:
            ident = cls.from_seed(data[4:36])
            if ident.public_key != data[36:]:
                raise IdentityError("key data is inconsistent: public key does not match seed")
            return ident
        raise IdentityError(
            "not an Ed25519 private key in libp2p format "
            f"(expected 36 or 68 bytes starting 08 01 12, got {len(data)} bytes)"
        )

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` (64-byte Ed25519 signature)."""
        return self.private_key.sign(data)


def load_or_create_identity(path: str | os.PathLike[str]) -> Identity:
    """Load the identity stored at ``path``, creating it (mode 0600) if the file does not exist.

    A file that exists but cannot be read or parsed raises ``IdentityError`` and is left
    untouched: the peer ID it holds is the node's account.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise IdentityError(f"{p}: cannot read key file: {exc.strerror or exc}") from None
    else:
        try:
            return Identity.from_libp2p_bytes(data)
        except IdentityError as exc:
            raise IdentityError(
                f"{p}: corrupt key file ({exc}); it was left untouched - restore it from a "
                "backup, or point the node at a new path to create a new identity"
            ) from None
    ident = Identity.generate()
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, ident.to_libp2p_bytes())
            os.fsync(fd)
        finally:
            os.close(fd)
        # link() is atomic and refuses to replace: a complete file or none, never clobbered
        os.link(tmp, p)
    except FileExistsError:
        return load_or_create_identity(p)
    except OSError as exc:
        raise IdentityError(f"{p}: cannot create key file: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("created new identity %s in %s", ident.peer_id, p)
    return ident
