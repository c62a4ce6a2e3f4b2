"""The command line: help, listings and one-line errors with conventional exit codes."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from wwwserve.cli import build_parser, main
from wwwserve.config import load_config


def test_every_command_has_help_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"demo", "node", "sim-engine", "keygen", "id", "genesis", "ledger"} <= set(commands)
    for name, sub in commands.items():
        assert "example:" in (sub.epilog or ""), name


def test_sim_engine_lists_profiles(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim-engine", "--list"]) == 0
    out = capsys.readouterr().out.split()
    assert "a100-80g/qwen3-8b" in out and "rtx3090/qwen3-8b" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["sim-engine", "--profile", "tpu/none"], "unknown engine profile 'tpu/none'; known:"),
    (["sim-engine", "--backend", "cuda"], "unknown attention backend 'cuda'"),
    (["sim-engine", "--port", "70000"], "--port: must be in [0, 65535]"),
    (["sim-engine", "--admission", "lazy"], "unknown admission rule 'lazy'; known: sglang"),
    (["demo", "--nodes", "1"], "--nodes: must be between 2 and 30"),
    (["demo", "--burst", "-1"], "--burst: must be >= 0"),
    (["testnet", "--gossip-degree", "0"], "--gossip-degree: must be between 1 and 16"),
])
def test_bad_arguments_are_one_line_errors(argv: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_node_with_a_bad_config_exits_2(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "n.yaml"
    cfg.write_text("models:\n  - model_path: m\n    engine: tgi\n")
    assert main(["node", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "models[0].engine: must be one of auto, sglang, vllm, sim" in err


def _copy_configs(tmp_path: Path, n: int = 3) -> list[str]:
    root = Path(__file__).resolve().parents[2] / "node_configs"
    out = []
    for k in range(1, n + 1):
        text = (root / f"node{k}.yaml").read_text()
        path = tmp_path / f"node{k}.yaml"
        path.write_text(text)
        out.append(str(path))
    return out


def test_genesis_from_node_configs_then_ledger_tools(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from wwwserve.identity import load_or_create_identity
    from wwwserve.ledger import BlockStore, Chain, Genesis, Payment, micro, sign_tx
    from wwwserve.wire import encode

    configs = _copy_configs(tmp_path)
    out = tmp_path / "genesis.yaml"
    assert main(["genesis", *configs, "-o", str(out), "--time", "0",
                 "--duel-loser-penalty", "0.5"]) == 0
    genesis = Genesis.load(out)
    assert genesis.network == "wwwserve-local" and len(genesis.allocations) == 3
    assert genesis.rules.duel_loser_ppm == 500_000 and genesis.rules.duel_reward == micro(1)
    assert all(a.stake == micro(100) and a.balance == micro(900)
               for a in genesis.allocations)
    # the members' keys were created where their configs say, and are the accounts
    keys = [load_or_create_identity(tmp_path / "keys" / f"node{k}.key") for k in (1, 2, 3)]
    assert [a.account for a in genesis.allocations] == [k.peer_id for k in keys]

    # a chain on disk for node 1, then the three ledger tools
    data = tmp_path / "data"
    store = BlockStore(data / "blocks")
    chain = Chain(genesis, on_block=lambda b: store.append(encode(b)))
    chain.add_tx(sign_tx(Payment(network=genesis.network, payer=keys[0].peer_id,
                                 payee=keys[1].peer_id, amount=micro(2), request_id="r1",
                                 nonce=0), keys[0]), now=0.0)
    for slot in range(1, 30):
        for k in keys:
            chain.propose(k, slot)
    assert chain.height > 5
    capsys.readouterr()
    common = ["--data-dir", str(data), "--genesis", str(out)]
    assert main(["ledger", "verify", *common]) == 0
    assert f"{chain.height} block(s) verified" in capsys.readouterr().out
    assert main(["ledger", "balance", *common, "--account", keys[1].peer_id]) == 0
    assert "balance   902.000000" in capsys.readouterr().out
    assert main(["ledger", "show", *common, "--json", "--last", "3"]) == 0
    import json
    shown = json.loads(capsys.readouterr().out)
    assert shown["height"] == chain.height and len(shown["blocks"]) == 3

    # damage in the middle of the file: a one-line error, exit 1
    raw = bytearray(store.path.read_bytes())
    raw[20] ^= 0xFF
    store.path.write_bytes(bytes(raw))
    assert main(["ledger", "verify", *common]) == 1
    err = capsys.readouterr().err
    assert "damaged record at byte offset 0" in err and err.count("\n") == 1


def test_genesis_needs_some_stake(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configs = _copy_configs(tmp_path, 2)
    for c in configs:
        p = Path(c)
        p.write_text(p.read_text().replace("initial_staked: 100.0", "initial_staked: 0.0"))
    assert main(["genesis", *configs, "-o", str(tmp_path / "g.yaml")]) == 2
    assert "somebody must stake at genesis" in capsys.readouterr().err


def test_a_node_without_http_engines_does_not_import_openai() -> None:
    # the openai package costs ~0.3 s to import: a node's start-up (and so how soon a
    # joiner is seen on a busy machine) should not pay it unless it drives an HTTP engine
    code = ("import sys, wwwserve.cli, wwwserve.node, wwwserve.engines; "
            "assert 'openai' not in sys.modules, 'openai imported'; "
            "from wwwserve.engines.http import HTTPEngine; HTTPEngine('http://127.0.0.1:1', 'm'); "
            "assert 'openai' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_verbose_is_taken_after_the_command_too() -> None:
    parser = build_parser()
    assert parser.parse_args(["node", "x.yaml"]).verbose == 0
    assert parser.parse_args(["-v", "node", "x.yaml"]).verbose == 1
    assert parser.parse_args(["node", "x.yaml", "-vv"]).verbose == 2  # was: an error
    assert parser.parse_args(["status", "http://127.0.0.1:1", "-v"]).verbose == 1


# ---- wwwserve node from flags ---------------------------------------------------------------
class _Member(http.server.BaseHTTPRequestHandler):
    """An engine's /v1/models and a member node's /status, on loopback."""

    def do_GET(self) -> None:
        body = {"/v1/models": {"object": "list", "data": [{"id": "served/qwen"}]},
                "/status": {"peer_id": PEER,
                            "addresses": [f"/ip4/127.0.0.1/tcp/5999/p2p/{PEER}"]},
                # what a hostile or broken member may answer instead
                "/odd/status": {"addresses": "/ip4/127.0.0.1/tcp/5999"},
                "/bare/status": {"addresses": ["/ip4/127.0.0.1/tcp/5999"], "peer_id": 7},
                "/big/status": {"addresses": ["x" * (2 << 20)]},
                "/odd/v1/models": {"data": {"id": "x"}},
                }.get(self.path)
        data = json.dumps(body).encode()
        self.send_response(200 if body else 404)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


PEER = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def member() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Member)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def printed_config(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["node", *argv, "--print-config"]) == 0, capsys.readouterr().err
    data = yaml.safe_load(capsys.readouterr().out)
    assert isinstance(data, dict)
    return data


def test_a_node_from_flags_alone_finds_its_model_and_a_member(
        member: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    data = printed_config(capsys, "--engine", member, "--bootstrap", member,
                          "--gateway", "127.0.0.1:9101", "--api-key", "k", "--data-dir", "d")
    # the engine's one model, and the member's multiaddr from its gateway's /status
    assert data["models"] == [{"base_url": member, "model_path": "served/qwen"}]
    assert data["network"]["bootstrap"] == [f"/ip4/127.0.0.1/tcp/5999/p2p/{PEER}"]
    assert data["gateway"] == {"host": "127.0.0.1", "port": 9101, "api_key": "k"}
    assert data["node"] == {"data_dir": "d"}


@pytest.mark.parametrize(("argv", "says"), [
    (["--bootstrap", "{m}/odd"], "--bootstrap: the node at {m}/odd gave no address"),
    (["--bootstrap", "{m}/bare"], "--bootstrap: the node at {m}/bare gave no address"),
    (["--bootstrap", "{m}/big"], "answer larger than 1048576 bytes"),
    (["--engine", "{m}/odd"], "--model: not given, and the engine at {m}/odd lists no model"),
])
def test_what_a_member_or_an_engine_answers_is_checked(
        member: str, capsys: pytest.CaptureFixture[str], argv: list[str], says: str) -> None:
    argv = [a.format(m=member) for a in argv]
    if "--engine" not in argv:
        argv += ["--engine", member]
    assert main(["node", *argv, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wwwserve node: error: ") and says.format(m=member) in err, err


def test_flags_win_over_variables_and_variables_over_the_file(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = str(ROOT / "node_configs" / "node2.yaml")
    monkeypatch.setenv("WWWSERVE_ENGINE", "http://127.0.0.1:31000")
    monkeypatch.setenv("WWWSERVE_POLICY", "default_vllm")
    monkeypatch.setenv("WWWSERVE_LISTEN", "/ip4/127.0.0.1/tcp/6001, /ip4/127.0.0.1/tcp/6002")
    data = printed_config(capsys, shipped, "--policy", "speed_aware")
    assert data["models"][0]["base_url"] == "http://127.0.0.1:31000"  # variable over file
    assert data["models"][0]["model_path"] == "Qwen/Qwen3-8B"  # the file's
    assert data["server_params"]["policy"] == "speed_aware"  # flag over variable
    assert data["network"]["listen"] == ["/ip4/127.0.0.1/tcp/6001", "/ip4/127.0.0.1/tcp/6002"]
    assert data["gateway"]["port"] == 8002  # untouched


@pytest.mark.parametrize(("argv", "says"), [
    ([], "give a node YAML file or --engine URL"),
    (["--engine", "http://127.0.0.1:1", "--model", "m", "--gateway", "8100"],
     "--gateway: must be HOST:PORT"),
    (["--engine", "http://127.0.0.1:1"], "--model: not given, and the engine did not say"),
    (["--engine", "http://127.0.0.1:1", "--model", "m", "--bootstrap", "/ip4/1.2.3.4/tcp/1"],
     "network.bootstrap[0]: it must end with /p2p/<peer id>"),
])
def test_a_node_from_bad_flags_is_a_clear_error(capsys: pytest.CaptureFixture[str],
                                                argv: list[str], says: str) -> None:
    assert main(["node", *argv, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wwwserve node: error: ") and says in err, err


def test_print_config_round_trips_through_wwwserve_node(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    made = printed_config(capsys, "--engine", "http://127.0.0.1:31000", "--model", "m",
                          "--bootstrap", f"/ip4/127.0.0.1/tcp/5778/p2p/{PEER}",
                          "--listen", "/ip4/127.0.0.1/tcp/5790", "--gateway", "0.0.0.0:9200")
    path = tmp_path / "made.yaml"
    path.write_text(yaml.safe_dump(made))
    assert printed_config(capsys, str(path)) == made  # the same config, from the file
    cfg = load_config(path)
    assert (cfg.models[0].base_url, cfg.gateway.port, cfg.network.listen) == (
        "http://127.0.0.1:31000", 9200, ("/ip4/127.0.0.1/tcp/5790",))
