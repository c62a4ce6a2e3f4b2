"""``wwwserve keygen`` and ``wwwserve id``: node keys and peer ids."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import load_config
from ..errors import IdentityError
from ..identity import Identity, load_or_create_identity

# ---- keys -------------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.exists():
        raise IdentityError(f"{path}: already exists; refusing to overwrite a key file")
    ident = load_or_create_identity(path)
    print(ident.peer_id)
    return 0


def cmd_id(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.suffix in (".yaml", ".yml"):
        key_path = load_config(path).node.identity_path
        if not key_path.exists():
            raise IdentityError(f"{key_path}: no key yet (it is created on the node's first "
                                "start, or with `wwwserve keygen`)")
    else:
        key_path = path
    try:
        data = key_path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"{key_path}: cannot read key file: {exc.strerror}") from None
    print(Identity.from_libp2p_bytes(data).peer_id)
    return 0
