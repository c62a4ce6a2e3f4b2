"""Config loading: the shipped files load, and every kind of bad input is a clear ConfigError."""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import pytest

from wwwserve.config import NodeConfig, ServerParams, load_config
from wwwserve.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
server_params:
  ip: 127.0.0.1
  port: 5778
  policy: default_sglang
  offload_frequency: 0.8
  queue_frequency: 0.2
  accept_frequency: 0.8
ledger_params:
  initial_credit: 1000.0
  initial_staked: 0.0
models:
  - model_path: Qwen/Qwen3-8B
    base_url: http://127.0.0.1:30000
    api_key: None
    gen_params: {max_tokens: 8192, temperature: 0.0, top_p: 0.95}
    dispatch_params: {target_token_usage: 0.6}
"""


def write(tmp_path: Path, text: str, name: str = "node.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_shipped_node_configs_load(n):
    cfg = load_config(ROOT / "node_configs" / f"node{n}.yaml")
    assert cfg.server_params.port == 5777 + n
    assert cfg.node.name == f"node{n}"
    assert cfg.node.identity_path == ROOT / "node_configs" / "keys" / f"node{n}.key"
    assert cfg.listen_addrs == (f"/ip4/127.0.0.1/tcp/{5777 + n}",)
    assert (n == 1) == (cfg.network.bootstrap == ())


def test_papers_schema_loads_with_defaults(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.server_params.accept_frequency == 0.8
    (model,) = cfg.models
    assert model.api_key is None  # the paper writes `None`
    assert model.gen_params.top_p == 0.95
    assert model.dispatch_params.target_token_usage == 0.6
    assert cfg.membership.peer_timeout == 5.0
    assert cfg.network.network_id == "wwwserve-local"
    assert cfg.node.data_dir == tmp_path / ".wwwserve" / "node"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml_names_line(tmp_path):
    msg = error_of(tmp_path, "server_params: {port: [1, 2}\n")
    assert "node.yaml: invalid YAML at line 1" in msg


def test_empty_file(tmp_path):
    assert "file is empty" in error_of(tmp_path, "")


def test_top_level_not_a_mapping(tmp_path):
    assert "top level: must be a mapping" in error_of(tmp_path, "- a\n- b\n")


def test_unknown_key_names_path_and_allowed(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("policy:", "polcy:"))
    assert "node.yaml: server_params.polcy: unknown key" in msg
    assert "accept_frequency" in msg and "policy" in msg


def test_unknown_nested_key_in_model(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("top_p: 0.95", "top_q: 0.95"))
    assert "models[0].gen_params.top_q: unknown key" in msg


def test_wrong_type(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("port: 5778", "port: fast"))
    assert "node.yaml: server_params.port: must be an integer, got 'fast'" in msg


def test_bool_is_not_a_number(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("offload_frequency: 0.8", "offload_frequency: true"))
    assert "server_params.offload_frequency: must be a number" in msg


def test_probability_out_of_range(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("accept_frequency: 0.8", "accept_frequency: 1.5"))
    assert "server_params.accept_frequency: must be a number in [0, 1], got 1.5" in msg


def test_target_token_usage_out_of_range(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("target_token_usage: 0.6", "target_token_usage: -0.1"))
    assert "models[0].dispatch_params.target_token_usage: must be a number in [0, 1]" in msg


def test_negative_credit(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("initial_credit: 1000.0", "initial_credit: -5"))
    assert "ledger_params.initial_credit: must be >= 0, got -5.0" in msg


def test_stake_above_credit(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("initial_staked: 0.0", "initial_staked: 5000"))
    assert "ledger_params.initial_staked: cannot exceed initial_credit" in msg


def test_duplicate_model(tmp_path):
    dup = GOOD + """  - model_path: Qwen/Qwen3-8B
    base_url: http://127.0.0.1:30001
"""
    msg = error_of(tmp_path, dup)
    assert "models[1].model_path: duplicate model 'Qwen/Qwen3-8B' (already models[0])" in msg


def test_missing_required_model_path(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("model_path: Qwen/Qwen3-8B", "name: x"))
    assert "models[0]" in msg


def test_bad_base_url(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("http://127.0.0.1:30000", "127.0.0.1:30000"))
    assert "models[0].base_url: must be an http:// or https:// URL" in msg


def test_bootstrap_needs_peer_id(tmp_path):
    msg = error_of(tmp_path, GOOD + "network:\n  bootstrap: [/ip4/127.0.0.1/tcp/5778]\n")
    assert "network.bootstrap[0]: it must end with /p2p/<peer id>" in msg


@pytest.mark.parametrize(("section", "value", "says"), [
    # each of these stopped a node with a traceback from inside libp2p
    ("network:\n  bootstrap: [/ip4/127.0.0.1/tcp/5778/p2p/]\n",
     "network.bootstrap[0]", "missing value for protocol: p2p"),
    ("network:\n  bootstrap: [/ip4/127.0.0.1/tcp/5778/p2p/12D3KooWabc]\n",
     "network.bootstrap[0]", "Invalid CID: 12D3KooWabc"),
    ("network:\n  bootstrap: [/ip4/300.0.0.1/tcp/5778/p2p/12D3KooWabc]\n",
     "network.bootstrap[0]", "is not IPv4"),
    ("network:\n  listen: [/ip4/127.0.0.1/tcp/70000]\n",
     "network.listen[0]", "integer not in range"),
    ("network:\n  listen: [/ip4/127.0.0.1/udp/5778]\n",
     "network.listen[0]", "no /tcp/<port> in it"),
])
def test_every_address_libp2p_reads_is_checked_when_the_config_loads(tmp_path, section,
                                                                     value, says):
    msg = error_of(tmp_path, GOOD + section)
    assert f"{value}: " in msg and says in msg, msg


def test_server_ip_must_be_an_ipv4_address(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("ip: 127.0.0.1", "ip: localhost"))
    assert "server_params.ip: must be an IPv4 address" in msg, msg


def test_gossip_degree_is_bounded_and_reaches_the_overlay(tmp_path):
    from wwwserve.node import Node

    cfg = load_config(write(tmp_path, GOOD + "network: {gossip_degree: 3}\n"))
    assert cfg.network.gossip_degree == 3
    assert Node(cfg, rng=random.Random(0)).overlay.gossip_degree == 3  # (built, not started)
    assert NodeConfig().network.gossip_degree == 4
    for bad in (0, 17):
        msg = error_of(tmp_path, GOOD + f"network: {{gossip_degree: {bad}}}\n")
        assert "network.gossip_degree: must be an integer in [1, 16]" in msg


def test_membership_timing_is_consistent(tmp_path):
    msg = error_of(tmp_path, GOOD + "membership:\n  heartbeat_interval: 5\n  peer_timeout: 2\n")
    assert "membership.peer_timeout: must be greater than heartbeat_interval" in msg


def test_port_range(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("port: 5778", "port: 70000"))
    assert "server_params.port: must be a TCP port in [0, 65535]" in msg


def test_dataclasses_validate_without_a_file():
    with pytest.raises(ConfigError, match=r"accept_frequency: must be a number in \[0, 1\]"):
        ServerParams(accept_frequency=2.0)
    assert NodeConfig().models == ()


def test_logging_levels_are_named_levels(tmp_path):
    cfg = load_config(write(tmp_path, GOOD + "logging: {level: info, libp2p_level: ERROR}\n"))
    assert (cfg.logging.level, cfg.logging.libp2p_level) == ("INFO", "ERROR")
    msg = error_of(tmp_path, GOOD + "logging: {level: LOUD}\n")
    assert "logging.level: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'LOUD'" \
        in msg


def test_the_gateway_default_port_is_not_an_engines_default() -> None:
    from wwwserve.config import GatewayParams

    assert GatewayParams().port not in (8000, 30000)  # vLLM's, SGLang's
