"""Fuzzing the config loader: whatever the file holds, a NodeConfig or a ConfigError."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wwwserve.config import NodeConfig, config_from_dict, load_config
from wwwserve.errors import ConfigError

GOOD = yaml.safe_load((Path(__file__).parent.parent.parent / "node_configs" / "node2.yaml")
                      .read_text())

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                      max_leaves=12)


def outcome(data: object) -> None:
    try:
        cfg = config_from_dict(data, source="fuzz.yaml", base_dir=Path("/tmp"))
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.yaml")  # names the file, then the key path
    else:
        assert isinstance(cfg, NodeConfig)


@given(values)
def test_any_document_gives_a_config_or_a_config_error(data: object) -> None:
    outcome(data)


def paths(node: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, (*prefix, i))
    return out


@given(st.data())
def test_a_good_config_with_any_one_value_replaced(data: st.DataObject) -> None:
    doc = copy.deepcopy(GOOD)
    where = data.draw(st.sampled_from(paths(doc)[1:]))
    target = doc
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = data.draw(values)
    outcome(doc)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=50)
@given(st.text(max_size=300))
def test_any_file_text_gives_a_config_or_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as exc:
        assert str(exc).startswith(str(path))


PEER = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
#: pieces of multiaddrs: protocol names and values, good and bad
parts = st.sampled_from(["ip4", "ip6", "tcp", "udp", "p2p", "dns4", "memory", "quic-v1",
                         "127.0.0.1", "300.1.2.3", "::1", "0", "5778", "70000", "-1", PEER,
                         "12D3KooWabc", "", "x" * 70, "%", "\x00"]) | st.text(max_size=8)
multiaddrs = st.lists(parts, max_size=7).map(lambda xs: "/" + "/".join(xs)) | st.text(
    max_size=30)


@given(st.sampled_from(["bootstrap", "listen"]), st.lists(multiaddrs, min_size=1, max_size=3))
def test_any_multiaddr_in_the_network_section_gives_a_config_or_a_config_error(
        key: str, addrs: list[str]) -> None:
    doc = copy.deepcopy(GOOD)
    doc["network"][key] = addrs
    try:
        config_from_dict(doc, source="fuzz.yaml", base_dir=Path("/tmp"))
    except ConfigError as exc:  # the file, then the key and which entry
        assert str(exc).startswith(f"fuzz.yaml: network.{key}["), str(exc)
