"""``wwwserve node`` (a provider node from a YAML config) and ``wwwserve sim-engine``."""

from __future__ import annotations

import argparse
import random
import signal
import sys

import trio

from ..config import NodeConfig, load_config
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


def cmd_node(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
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
