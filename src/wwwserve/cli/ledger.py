"""``wwwserve genesis`` and ``wwwserve ledger``: private networks' genesis and chains."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ..config import load_config
from ..errors import ConfigError, WWWServeError
from ..identity import load_or_create_identity

if TYPE_CHECKING:
    from ..ledger import Chain
from ._common import print_json
from .status import fetch_json, gateway_url

# ---- ledger -----------------------------------------------------------------------------


def cmd_genesis(args: argparse.Namespace) -> int:
    import time

    from ..ledger import Allocation, Genesis, micro

    configs = [load_config(c) for c in args.configs]
    networks = {c.network.network_id for c in configs}
    network = args.network or (networks.pop() if len(networks) == 1 else None)
    if network is None:
        raise ConfigError(f"the configs name different networks {sorted(networks)}; "
                          "pick one with --network")
    allocations = []
    for path, cfg in zip(args.configs, configs, strict=True):
        key = cfg.node.identity_path
        created = not key.exists()
        ident = load_or_create_identity(key)
        lp = cfg.ledger_params
        allocations.append(Allocation.of_credit(ident.peer_id, lp.initial_credit,
                                                lp.initial_staked))
        note = " (new key)" if created else ""
        print(f"{path}: {ident.peer_id}{note} credit {lp.initial_credit:g} "
              f"staked {lp.initial_staked:g}", file=sys.stderr)
    try:
        genesis = Genesis(network=network, time=args.time if args.time is not None
                          else float(int(time.time())), allocations=tuple(allocations),
                          slot_length=args.slot_length, join_grant=micro(args.join_grant),
                          unbonding_blocks=args.unbonding_blocks,
                          duel_reward=micro(args.duel_reward),
                          duel_loser_ppm=round(args.duel_loser_penalty * 1e6),
                          duel_minority_ppm=round(args.duel_minority_penalty * 1e6),
                          duel_silent_ppm=round(args.duel_silent_penalty * 1e6))
    except ValueError as exc:
        raise ConfigError(f"genesis: {exc}") from None
    text = genesis.to_yaml()
    if args.output == "-":
        print(text, end="")
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.output} (network {network}, {len(allocations)} members, "
              f"id {genesis.id.hex()[:16]})", file=sys.stderr)
    return 0


def _open_chain(args: argparse.Namespace) -> tuple[Chain, Path]:
    """The chain replayed from a node's block file (config, or --data-dir + --genesis)."""
    from ..ledger import BlockStore, Chain, Genesis
    from ..ledger.service import replay

    if args.config is not None:
        cfg = load_config(args.config)
        if cfg.network.genesis is None:
            raise ConfigError(f"{args.config}: network.genesis is not set (no ledger)")
        genesis_path, data_dir = cfg.network.genesis, cfg.node.data_dir
    else:
        if args.genesis is None or args.data_dir is None:
            raise ConfigError("give a node config or gateway URL, or both --data-dir and "
                              "--genesis")
        genesis_path, data_dir = Path(args.genesis), Path(args.data_dir)
    chain = Chain(Genesis.load(genesis_path))
    store = BlockStore(data_dir / "blocks")
    replay(chain, store, repair=False)  # the node may be running and appending
    return chain, store.path


def cmd_ledger(args: argparse.Namespace) -> int:
    from ..ledger import credits
    from ..ledger.service import ledger_view

    running = args.config is not None and args.config.startswith(("http://", "https://"))
    if running:
        if args.action == "verify":
            raise ConfigError("verify replays a block file: give the node's config or "
                              "--data-dir and --genesis, not a URL")
        view = trio.run(fetch_json, gateway_url(args.config), "/ledger", args.api_key)
        source = args.config
    else:
        chain, path = _open_chain(args)
        source = str(path)
        if args.action == "verify":
            state = chain.state
            expected = state.genesis_supply + state.issued - state.burned
            if state.total() != expected:
                raise WWWServeError(f"{path}: total credit {state.total()} != {expected}")
            print(f"{path}: OK: {chain.height} block(s) verified (signatures, proposers, "
                  f"transactions, state roots); total credit {credits(state.total()):g}")
            return 0
        view = ledger_view(chain, last=args.last)
    if args.action == "balance":
        rows = [r for r in view.get("accounts", [])
                if args.account is None or r["account"] == args.account]
        if args.account is not None and not rows:
            raise WWWServeError(f"{source}: no account {args.account}")
        if args.json:
            print_json(rows)
            return 0
        for r in rows:
            print(f"{r['account']}  balance {r['balance']:>12.6f}  stake "
                  f"{r['stake']:>10.6f}  unbonding {r['unbonding']:>10.6f}  "
                  f"nonce {r['nonce']}")
        return 0
    view.pop("accounts", None)
    view["blocks"] = view.get("blocks", [])[-args.last:] if args.last > 0 else []
    if args.json:
        print_json(view)
        return 0
    print(f"network {view['network']}  height {view['height']}  final "
          f"{view['finalized_height']}  tip {str(view['tip'])[:16]}  total credit "
          f"{view['total_credit']:g}  pending {view['pending']}")
    for b in view["blocks"]:
        print(f"  #{b['height']:<6} slot {b['slot']:<8} by {b['proposer']}  {b['txs']} tx")
    return 0
