"""The ``wwwserve`` parser and entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import ConfigError, IdentityError, WWWServeError, leaves
from ._common import EPILOG, setup_logging
from .demo import cmd_demo
from .keys import cmd_id, cmd_keygen
from .ledger import cmd_genesis, cmd_ledger
from .node import cmd_node, cmd_sim_engine
from .simulate import cmd_simulate
from .status import cmd_status
from .testnet import cmd_testnet

# ---- entry point ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="wwwserve", description="A decentralized market of LLM services over libp2p.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"wwwserve {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-vvv includes libp2p)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # -v after the command too (`wwwserve node x.yaml -v`; given on both sides, the -v after
    # the command counts)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="more logging (-vvv includes libp2p)")

    def add(name: str, help_: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, parents=[common],
                              epilog=f"example:\n  {example}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = add("demo", "N nodes on loopback with simulated engines; a burst on node0 is offloaded",
            "wwwserve demo --nodes 4 --burst 40")
    p.add_argument("--nodes", type=int, default=4, help="number of nodes (2-30, default 4)")
    p.add_argument("--duration", type=float, default=30.0,
                   help="give up after this many seconds (default 30)")
    p.add_argument("--burst", type=int, default=40,
                   help="requests node0's users send at once (default 40)")
    p.set_defaults(func=cmd_demo)

    p = add("node", "run one node (from a YAML config, flags, or both) until Ctrl-C",
            "wwwserve node --engine http://127.0.0.1:8000 --bootstrap http://member:8100\n"
            "  wwwserve node node_configs/node1.yaml")
    p.add_argument("config", nargs="?", default=None,
                   help="node YAML file (see node_configs/); the flags below override it")
    g = p.add_argument_group(
        "config from the command line (each also a WWWSERVE_<FLAG> variable, e.g. "
        "WWWSERVE_ENGINE; flags win over variables, variables over the file)")
    g.add_argument("--engine", metavar="URL",
                   help="the OpenAI-compatible engine to serve (models[0].base_url); its "
                        "kind (SGLang, vLLM) is told by its /metrics")
    g.add_argument("--model", metavar="NAME",
                   help="the model's name in the network (models[0].model_path; default: "
                        "the one model the engine lists)")
    g.add_argument("--bootstrap", metavar="ADDR", action="append",
                   help="a member to join through: its multiaddr, or its gateway's URL "
                        "(the address is fetched from its /status); repeatable")
    g.add_argument("--listen", metavar="MULTIADDR", action="append",
                   help="where to listen for peers (network.listen); repeatable")
    g.add_argument("--gateway", metavar="HOST:PORT",
                   help="where the OpenAI-compatible gateway listens (default 127.0.0.1:8100)")
    g.add_argument("--api-key", metavar="KEY",
                   help="the key the gateway's users must send (gateway.api_key)")
    g.add_argument("--data-dir", metavar="DIR", help="the node's data directory (node.data_dir)")
    g.add_argument("--policy", metavar="NAME", help="server_params.policy")
    p.add_argument("--print-config", action="store_true",
                   help="print the config these make, as YAML, and exit")
    p.add_argument("--json-events", action="store_true",
                   help="print one JSON object per line for the start and each change of the "
                   "peer table (joined, suspected, recovered, rejoined, left)")
    p.set_defaults(func=cmd_node)

    p = add("sim-engine", "serve a simulated GPU engine over an SGLang-compatible HTTP API",
            "wwwserve sim-engine --profile h100/qwen3-8b --port 30000")
    p.add_argument("--profile", default="a100-80g/qwen3-8b",
                   help="GPU/model profile (default a100-80g/qwen3-8b; --list shows all)")
    p.add_argument("--backend", default="flashinfer",
                   help="attention backend: flashinfer, triton or sdpa (default flashinfer)")
    p.add_argument("--model", default=None,
                   help="model name to serve (default: the profile's model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=30000, help="port (0 picks a free one)")
    p.add_argument("--seed", type=int, default=0, help="random seed (output lengths, text)")
    p.add_argument("--stream-interval", type=int, default=1,
                   help="tokens per streamed chunk (default 1)")
    p.add_argument("--mean-output-tokens", type=int, default=256,
                   help="mean output length when the request does not set ignore_eos")
    p.add_argument("--admission", default="sglang",
                   help="admission rule: sglang (optimistic, retracts when the KV runs out; "
                        "the default) or reserve (a request's whole KV footprint)")
    p.add_argument("--reasoning", action="store_true",
                   help="answer like a reasoning model: reasoning_content first (a request "
                        "may turn it off with chat_template_kwargs.enable_thinking: false)")
    p.add_argument("--tool-call-probability", type=float, default=0.5,
                   help="how often a request with tools and tool_choice auto gets a tool "
                        "call (default 0.5)")
    p.add_argument("--api-key", default=None, help="require this bearer key")
    p.add_argument("--json", action="store_true", help="print the start event as JSON")
    p.add_argument("--list", action="store_true", help="list the profiles and exit")
    p.set_defaults(func=cmd_sim_engine)

    p = add("testnet", "N node processes on loopback, each with an engine, a private "
            "genesis, a workload through the gateways, and a report",
            "wwwserve testnet --nodes 5 --rate 2 --duration 20   # or: --engine URL ...")
    p.add_argument("--nodes", type=int, default=4, help="number of node processes (default 4)")
    p.add_argument("--engine", nargs="+", metavar="URL", default=None,
                   help="engine base URLs (one for all nodes, or one per node); default: a "
                        "`wwwserve sim-engine` process per node")
    p.add_argument("--profile", default=None,
                   help="sim-engine profile for every node (default: the first quarter "
                        "rtx3090, the rest h100 / a100-80g)")
    p.add_argument("--model", default=None,
                   help="model name (default Qwen/Qwen3-8B, or the first --engine's model)")
    p.add_argument("--workload", default="hot",
                   help="hot (the first quarter of the nodes gets 4x the traffic), uniform, "
                        "or burst (--requests at once on node0); default hot")
    p.add_argument("--rate", type=float, default=3.0,
                   help="requests per second over the whole network (default 3)")
    p.add_argument("--duration", type=float, default=30.0,
                   help="seconds of arrivals (default 30)")
    p.add_argument("--requests", type=int, default=0,
                   help="cap on the number of requests (burst: the count; default no cap)")
    p.add_argument("--prompt-tokens", type=int, default=2000, help="prompt length (default 2000)")
    p.add_argument("--max-tokens", type=int, default=128, help="output length (default 128)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="per-request limit in seconds (default 120)")
    p.add_argument("--p-inspect", type=float, default=0.1,
                   help="share of offloaded requests duelled (default 0.1)")
    p.add_argument("--gossip-degree", type=int, default=None,
                   help="GossipSub's D for every node (network.gossip_degree; default 4; "
                        "3 eases many processes on a small machine)")
    p.add_argument("--seed", type=int, default=0, help="workload random seed (default 0)")
    p.add_argument("--out", default=None,
                   help="keep configs, keys, chains, logs and report.json in this new folder "
                        "(default: a temporary folder, removed at the end)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_testnet)

    p = add("status", "show a running node's peers, load, credit, stake, duels and ratings "
            "(via its gateway)",
            "wwwserve status node_configs/node1.yaml   # or: wwwserve status http://127.0.0.1:8001")
    p.add_argument("target", help="the node's config file or its gateway URL")
    p.add_argument("--api-key", default=None, help="the gateway's bearer key, if it has one")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p.set_defaults(func=cmd_status)

    p = add("simulate", "serve a scenario's workload single / centralized / decentralized, "
            "in virtual time", "wwwserve simulate fluctuating --seed 1 --out results/fl")
    p.add_argument("scenario", nargs="?", default=None,
                   help="a shipped scenario name (see --list) or a scenario YAML file")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", default=None,
                   help="output folder (default results/<scenario>-seed<N>)")
    p.add_argument("--strategies", default=None,
                   help="comma-separated subset of single,centralized,oracle,decentralized "
                        "(default: the scenario's own list, else all four)")
    p.add_argument("--list", action="store_true", help="list the shipped scenarios")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_simulate)

    p = add("genesis", "build a private network's genesis from its members' node configs",
            "wwwserve genesis node_configs/*.yaml -o genesis.yaml")
    p.add_argument("configs", nargs="+", help="the members' node YAML files")
    p.add_argument("-o", "--output", default="genesis.yaml",
                   help="where to write it (- for stdout; default genesis.yaml)")
    p.add_argument("--network", default=None, help="network id (default: the configs')")
    p.add_argument("--time", type=float, default=None,
                   help="Unix time of slot 0 (default: now)")
    p.add_argument("--slot-length", type=float, default=2.0, help="seconds per slot")
    p.add_argument("--join-grant", type=float, default=0.0,
                   help="credit a new account may claim once (default 0: none)")
    p.add_argument("--unbonding-blocks", type=int, default=30,
                   help="blocks before unstaked credit is spendable (default 30)")
    p.add_argument("--duel-reward", type=float, default=1.0,
                   help="credit a duel's winner gets from its requester (default 1)")
    p.add_argument("--duel-loser-penalty", type=float, default=1.0,
                   help="share of a duel loser's stake that goes to the winner (default 1.0)")
    p.add_argument("--duel-minority-penalty", type=float, default=0.2,
                   help="share of a minority judge's stake taken (default 0.2)")
    p.add_argument("--duel-silent-penalty", type=float, default=0.05,
                   help="share of a silent judge's stake taken (default 0.05)")
    p.set_defaults(func=cmd_genesis)

    p = add("ledger", "inspect a node's chain on disk: show, verify, balance",
            "wwwserve ledger verify node_configs/node1.yaml")
    p.add_argument("action", choices=["show", "verify", "balance"])
    p.add_argument("config", nargs="?", default=None,
                   help="the node's YAML config or gateway URL (or use --data-dir and "
                        "--genesis)")
    p.add_argument("--api-key", default=None, help="the gateway's bearer key, if it has one")
    p.add_argument("--data-dir", default=None, help="the node's data directory")
    p.add_argument("--genesis", default=None, help="the network's genesis file")
    p.add_argument("--account", default=None, help="balance: only this account")
    p.add_argument("--last", type=int, default=10, help="show: how many blocks (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_ledger)

    p = add("keygen", "create a new Ed25519 key file (mode 0600) and print its peer id",
            "wwwserve keygen keys/my-node.key")
    p.add_argument("path", help="where to write the key (must not exist)")
    p.set_defaults(func=cmd_keygen)

    p = add("id", "print the peer id of a key file or of a node config's key",
            "wwwserve id node_configs/node1.yaml")
    p.add_argument("path", help="a key file, or a node YAML config")
    p.set_defaults(func=cmd_id)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        try:
            code: int = args.func(args)
        except BaseExceptionGroup as group:
            raise _single(group) from None
    except (ConfigError, IdentityError) as exc:
        print(f"wwwserve {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except WWWServeError as exc:
        print(f"wwwserve {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return code


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one wwwserve error (or Ctrl-C) inside nested nursery groups, else the group."""
    found = leaves(group)
    for kind in (KeyboardInterrupt, ConfigError, IdentityError, WWWServeError):
        for leaf in found:
            if isinstance(leaf, kind):
                return leaf
    return group
