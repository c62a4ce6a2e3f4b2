"""``wwwserve node`` (a provider node from a YAML config) and ``wwwserve sim-engine``."""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio
import yaml

from ..config import NodeConfig, config_from_dict, config_name, read_config_data
from ..errors import ConfigError
from ._common import print_json, setup_logging

# ---- node -------------------------------------------------------------------------------


async def _run_node(cfg: NodeConfig, json_events: bool) -> None:
    from ..membership import MembershipEventKind
    from ..node import Node

    node = Node(cfg, rng=random.Random())
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with node, node.membership.events() as events, trio.open_nursery() as nursery:
            if json_events:
                print_json({"event": "started", "peer_id": node.peer_id,
                             "addresses": list(node.addresses), "gateway": node.gateway_url})
            else:
                print(f"node {cfg.node.name} {node.peer_id}")
                for addr in node.addresses:
                    print(f"  listening on {addr}")
                if node.gateway_url:
                    print(f"  OpenAI-compatible gateway at {node.gateway_url}/v1")
                sys.stdout.flush()

            async def stop_on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            async for ev in events:
                if ev.kind is MembershipEventKind.UPDATED:
                    continue  # a live peer's routine heartbeat: the table is unchanged
                peers = sorted(node.peers)
                if json_events:
                    print_json({"event": ev.kind.value, "peer_id": ev.peer_id,
                                 "peers": peers})
                else:
                    print(f"{ev.kind.value:>9} {ev.peer_id}  ({len(peers)} peers)", flush=True)


#: ``wwwserve node`` flags that set a config value, each also a WWWSERVE_<NAME> variable
NODE_FLAGS = ("engine", "model", "bootstrap", "listen", "gateway", "api_key", "data_dir",
              "policy")
#: of them, the ones that take several values (the variable: separated by spaces or commas)
LIST_FLAGS = ("bootstrap", "listen")


def _flag_values(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, Any]:
    """The flags given, else their WWWSERVE_* variables (flags win)."""
    values: dict[str, Any] = {}
    for flag in NODE_FLAGS:
        value = getattr(args, flag, None)
        if not value:
            env = environ.get(f"WWWSERVE_{flag.upper()}", "").strip()
            if env:
                value = env.replace(",", " ").split() if flag in LIST_FLAGS else env
        if value:
            values[flag] = value
    return values


#: the most a member's /status or an engine's /v1/models may send back at start-up
MAX_FETCH_BYTES = 1 << 20


def _fetch_json(url: str) -> Any:
    """``url``'s JSON, read up to ``MAX_FETCH_BYTES`` (a URL the user gave, but the
    server behind it may be anyone's)."""
    import httpx

    try:
        with httpx.stream("GET", url, timeout=10.0) as resp:
            resp.raise_for_status()
            body = bytearray()
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > MAX_FETCH_BYTES:
                    raise ValueError(f"answer larger than {MAX_FETCH_BYTES} bytes")
        return json.loads(body)
    except (httpx.HTTPError, ValueError) as exc:
        raise ConfigError(f"{url}: {type(exc).__name__}: {exc}") from None


def _served_model(engine: str) -> str:
    """The one model the engine at ``engine`` lists on its /v1/models."""
    from ..engines.http import listed_models, root_url

    try:
        names = listed_models(_fetch_json(root_url(engine) + "/v1/models"))
    except ConfigError as exc:
        raise ConfigError(f"--model: not given, and the engine did not say what it serves "
                          f"({exc})") from None
    if len(names) != 1:
        raise ConfigError(f"--model: not given, and the engine at {engine} lists "
                          f"{', '.join(names[:8]) or 'no model'}; say which one")
    return names[0]


def _member_address(addr: str) -> str:
    """A bootstrap address: a multiaddr as given, or from a member gateway's /status
    (the config's check of every bootstrap address then applies to it)."""
    if not addr.startswith(("http://", "https://")):
        return addr
    status = _fetch_json(addr.rstrip("/") + "/status")
    found = status.get("addresses") if isinstance(status, dict) else None
    first = found[0] if isinstance(found, list) and found else None
    peer = status.get("peer_id") if isinstance(status, dict) else None
    if not isinstance(first, str) or ("/p2p/" not in first and not isinstance(peer, str)):
        raise ConfigError(f"--bootstrap: the node at {addr} gave no address in its /status")
    return first if "/p2p/" in first else f"{first}/p2p/{peer}"


def node_config_data(args: argparse.Namespace, environ: Mapping[str, str]
                     ) -> tuple[dict[str, Any], str, Path, str]:
    """The node's config mapping: its YAML file (if given) with the flags and WWWSERVE_*
    variables applied on top; also the source to name in errors, the directory relative
    paths resolve against, and the default node name."""
    flags = _flag_values(args, environ)
    if args.config:
        path = Path(args.config)
        data = read_config_data(path)
        source, base, name = str(path), path.resolve().parent, config_name(path)
    elif "engine" in flags:
        data, source, base, name = {}, "the command line", Path.cwd(), "node"
    else:
        raise ConfigError("give a node YAML file or --engine URL (the engine to serve "
                          "behind this node; see wwwserve node --help)")
    data = copy.deepcopy(data)

    def section(key: str) -> dict[str, Any]:
        got = data.setdefault(key, {})
        if not isinstance(got, dict):
            raise ConfigError(f"{source}: {key}: must be a mapping, got {type(got).__name__}")
        return got

    models = data.get("models") or []
    if not isinstance(models, list) or (models and not isinstance(models[0], dict)):
        raise ConfigError(f"{source}: models: must be a list of mappings")
    if "engine" in flags or "model" in flags:
        first = dict(models[0]) if models else {}
        if "engine" in flags:
            first["base_url"] = flags["engine"]
        if "model" in flags:
            first["model_path"] = flags["model"]
        elif "model_path" not in first:
            first["model_path"] = _served_model(first.get("base_url", ""))
        if "base_url" not in first:
            raise ConfigError("--model: needs --engine (or a config whose models[0] has one)")
        data["models"] = [first, *models[1:]]
    if "bootstrap" in flags:
        section("network")["bootstrap"] = [_member_address(a) for a in flags["bootstrap"]]
    if "listen" in flags:
        section("network")["listen"] = list(flags["listen"])
    if "gateway" in flags:
        host, sep, port = str(flags["gateway"]).rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"--gateway: must be HOST:PORT like 127.0.0.1:8100, got "
                              f"{flags['gateway']!r}")
        section("gateway").update(host=host or "127.0.0.1", port=int(port))
    if "api_key" in flags:
        section("gateway")["api_key"] = flags["api_key"]
    if "data_dir" in flags:
        section("node")["data_dir"] = flags["data_dir"]
    if "policy" in flags:
        section("server_params")["policy"] = flags["policy"]
    return data, source, base, name


def cmd_node(args: argparse.Namespace) -> int:
    data, source, base, name = node_config_data(args, os.environ)
    cfg = config_from_dict(data, source=source, base_dir=base, name=name)  # checks it all
    if args.print_config:
        print(yaml.safe_dump(data, sort_keys=False), end="")
        return 0
    setup_logging(args.verbose, cfg.logging.level, cfg.logging.libp2p_level)
    trio.run(_run_node, cfg, args.json_events)
    return 0


# ---- sim-engine -------------------------------------------------------------------------


async def _sim_engine(args: argparse.Namespace) -> None:
    from ..engines import SimEngine, get_profile
    from ..http import SimEngineServer

    profile = get_profile(args.profile, args.backend)
    engine = SimEngine(profile, models=(args.model or profile.model,), seed=args.seed,
                       stream_interval=args.stream_interval,
                       mean_output_tokens=args.mean_output_tokens,
                       admission=args.admission, reasoning=args.reasoning or None,
                       tool_call_probability=args.tool_call_probability)
    server = SimEngineServer(engine, args.host, args.port, api_key=args.api_key)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.run)
            if args.json:
                print_json({"event": "started", "url": url, "model": engine.models[0],
                             "profile": profile.name})
            else:
                print(f"simulated {profile.name} ({args.backend}) serving {engine.models[0]} "
                      f"at {url}/v1 (metrics at {url}/metrics)", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return


def cmd_sim_engine(args: argparse.Namespace) -> int:
    from ..engines import profile_names

    if args.list:
        for name in profile_names():
            print(name)
        return 0
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: must be in [0, 65535], got {args.port}")
    if not 0.0 <= args.tool_call_probability <= 1.0:
        raise ConfigError(f"--tool-call-probability: must be in [0, 1], got "
                          f"{args.tool_call_probability}")
    trio.run(_sim_engine, args)
    return 0
