"""Node configuration: frozen dataclasses and a strict YAML loader.

One job: what a node's YAML may say, checked when it loads.

The YAML schema is the WWW.Serve paper's (``server_params``, ``ledger_params``, ``models`` with
``gen_params`` and ``dispatch_params``), plus optional sections with defaults: ``node`` (name,
data directory, key file), ``network`` (network id, listen address, bootstrap peers),
``gateway`` (the users' HTTP address) and ``membership`` (gossip timing).

Each dataclass checks its own values in ``__post_init__``, so a config built in Python is
validated exactly like one read from a file. The loader adds the file and the key path to every
message: ``node1.yaml: server_params.accept_frequency: must be a number in [0, 1], got 1.5``.

Relative paths inside a file (``node.data_dir``, ``node.key_path``) are resolved against the
directory of that file, so a config works from any current directory.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError

__all__ = [
    "DEFAULT_DISPATCH",
    "GOSSIP_DEGREES",
    "DispatchParams",
    "DuelParams",
    "GatewayParams",
    "GenParams",
    "LedgerParams",
    "LoggingParams",
    "MembershipParams",
    "ModelConfig",
    "ModelDispatchParams",
    "NetworkParams",
    "NodeConfig",
    "NodeParams",
    "ServerParams",
    "build_section",
    "config_from_dict",
    "load_config",
]

T = TypeVar("T")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_POLICY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*(:[A-Za-z_][A-Za-z0-9_]*)?$")


def _multiaddr_problem(addr: object, *, peer: bool) -> str | None:
    """What is wrong with ``addr`` as a TCP multiaddr (ending in a peer id if ``peer``),
    checked as libp2p will read it; None if nothing."""
    from multiaddr import Multiaddr  # (the multiaddr package only, not libp2p)

    if not isinstance(addr, str) or not addr.startswith("/"):
        return "not a multiaddr"
    try:
        protocols = [p.name for p in Multiaddr(addr).protocols()]
    except Exception as exc:  # the parser raises several kinds; each says what is wrong
        return re.sub(r"^Invalid MultiAddr '.*?': ", "", str(exc).split(" (string:")[0])
    if "tcp" not in protocols and "memory" not in protocols:  # (memory: the simulator's)
        return "no /tcp/<port> in it"
    if peer and protocols[-1] != "p2p":
        return "it must end with /p2p/<peer id>"
    if not peer and "p2p" in protocols:
        return "a listen address names no peer id"
    return None


def _fmt(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _probability(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}: must be a number in [0, 1], got {_fmt(value)}")


def _non_negative(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if not value >= 0:
        raise ConfigError(f"{name}: must be >= 0, got {_fmt(value)}")


def _positive(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if not value > 0:
        raise ConfigError(f"{name}: must be > 0, got {_fmt(value)}")


def _port(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if not 0 <= value <= 65535:
        raise ConfigError(f"{name}: must be a TCP port in [0, 65535] (0 picks a free one), "
                          f"got {_fmt(value)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerParams:
    """``server_params``: the node's p2p address and its dispatch policy knobs."""

    ip: str = "127.0.0.1"
    port: int = 5778
    policy: str = "default_sglang"
    offload_frequency: float = 0.8
    queue_frequency: float = 0.2
    accept_frequency: float = 0.8

    def __post_init__(self) -> None:
        _port(self, "port")
        try:  # it makes the default listen address /ip4/<ip>/tcp/<port>
            ipaddress.IPv4Address(self.ip)
        except (ipaddress.AddressValueError, TypeError):
            raise ConfigError(f"ip: must be an IPv4 address like 127.0.0.1, "
                              f"got {_fmt(self.ip)}") from None
        for name in ("offload_frequency", "queue_frequency", "accept_frequency"):
            _probability(self, name)
        if not _POLICY_RE.match(self.policy):
            raise ConfigError(f"policy: must be a registered policy name like "
                              f"'default_sglang' or a dotted path 'package.module:Class', "
                              f"got {_fmt(self.policy)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerParams:
    """``ledger_params``: this node's allocation when a private network's genesis is built."""

    initial_credit: float = 1000.0
    initial_staked: float = 0.0

    def __post_init__(self) -> None:
        _non_negative(self, "initial_credit")
        _non_negative(self, "initial_staked")
        if self.initial_staked > self.initial_credit:
            raise ConfigError(
                f"initial_staked: cannot exceed initial_credit ({self.initial_credit}), "
                f"got {self.initial_staked}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class GenParams:
    """``gen_params``: this provider's default sampling parameters for this model.

    Applied to every request this model runs (its own users' and its peers') where the
    request does not set the field: the user's values win. A field left out (null) is not
    sent, so the engine's own default applies.
    """

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    def __post_init__(self) -> None:
        if self.max_tokens is not None:
            _positive(self, "max_tokens")
        if self.temperature is not None:
            _non_negative(self, "temperature")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p: must be a number in (0, 1], got {_fmt(self.top_p)}")
        if self.top_k is not None and self.top_k < 1 and self.top_k != -1:
            raise ConfigError(f"top_k: must be >= 1 (or -1 for no limit), got {self.top_k}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value is not None and not -2.0 <= value <= 2.0:
                raise ConfigError(f"{name}: must be a number in [-2, 2], got {_fmt(value)}")

    def defaults(self) -> dict[str, int | float]:
        """The fields that are set, as request fields."""
        out: dict[str, int | float] = {}
        for name in ("max_tokens", "temperature", "top_p", "top_k", "presence_penalty",
                     "frequency_penalty"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelDispatchParams:
    """``models[].dispatch_params``: when this model counts as busy."""

    target_token_usage: float = 0.6
    #: decide on the engine's last load reading *plus* the requests admitted to it since
    #: that reading (false: on the reading alone, the authors' rule, which lets a burst
    #: that arrives between two readings all land on one engine)
    count_admitted: bool = True

    def __post_init__(self) -> None:
        _probability(self, "target_token_usage")
        if not isinstance(self.count_admitted, bool):
            raise ConfigError(f"count_admitted: must be true or false, got "
                              f"{_fmt(self.count_admitted)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchParams:
    """``dispatch`` (optional): how this node offloads requests and serves its peers'.

    Timeouts are in seconds. ``keepalive_interval`` must stay below the peers'
    ``stall_timeout`` (theirs, not only this node's: they decide when an answer stalled);
    ``.inf`` sends no keepalives.
    """

    #: peers drawn by stake for each offload (the first gets an offer, the rest a probe)
    candidates: int = 3
    #: most nodes a request may pass through (a peer's request that has passed more is refused)
    max_hops: int = 2
    #: how long a probe, an offer's first reply and an answer's receipt may take
    probe_timeout: float = 2.0
    #: silence after which an executor's answer counts as stalled (it is abandoned)
    stall_timeout: float = 30.0
    #: silence after which this node, executing, tells its requester it is still at work
    keepalive_interval: float = 10.0
    #: most requests one peer may have running here at once (a flood is refused)
    max_peer_inflight: int = 32
    #: most requests of all peers together running here at once
    max_peers_inflight: int = 64
    #: credit paid to an executor for one served request
    reward: float = 1.0
    #: how long an accepted probe entitles its peer to send that request
    grant_ttl: float = 30.0

    def __post_init__(self) -> None:
        for name in ("candidates", "max_hops", "probe_timeout", "stall_timeout",
                     "keepalive_interval", "max_peer_inflight", "max_peers_inflight",
                     "grant_ttl"):
            _positive(self, name)
        _non_negative(self, "reward")
        for name in ("candidates", "max_hops", "max_peer_inflight", "max_peers_inflight"):
            if not isinstance(getattr(self, name), int):
                raise ConfigError(f"{name}: must be a whole number, got "
                                  f"{_fmt(getattr(self, name))}")
        for name in ("probe_timeout", "stall_timeout", "grant_ttl", "reward"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name}: must be a finite number, got "
                                  f"{_fmt(getattr(self, name))}")
        if self.max_peers_inflight < self.max_peer_inflight:
            raise ConfigError(f"max_peers_inflight: must be at least max_peer_inflight "
                              f"({self.max_peer_inflight}), got {self.max_peers_inflight}")


#: the dispatcher's defaults
DEFAULT_DISPATCH = DispatchParams()

ENGINE_KINDS = ("auto", "sglang", "vllm", "sim")


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    """One entry of ``models``: a model served by an OpenAI-compatible engine."""

    model_path: str
    base_url: str = "http://127.0.0.1:30000"
    api_key: str | None = None
    gen_params: GenParams = field(default_factory=GenParams)
    dispatch_params: ModelDispatchParams = field(default_factory=ModelDispatchParams)
    #: ``auto`` (an HTTP engine at ``base_url``, SGLang or vLLM as its metrics tell),
    #: ``sglang`` or ``vllm`` (checked against its metrics), or ``sim`` (a simulated
    #: engine in the node's process with ``sim_profile`` and ``attention_backend``)
    engine: str = "auto"
    #: the engine's own name for the model (vLLM's and SGLang's ``--served-model-name``)
    #: when it differs from ``model_path``, the name the network knows; unset: the
    #: engine's ``/v1/models`` is asked
    served_model_name: str | None = None
    sim_profile: str = "a100-80g/qwen3-8b"
    attention_backend: str = "flashinfer"
    #: seconds a load reading of an HTTP engine's ``/metrics`` is reused
    scrape_interval: float = 0.5

    def __post_init__(self) -> None:
        _positive(self, "scrape_interval")
        if self.engine not in ENGINE_KINDS:
            raise ConfigError(f"engine: must be one of {', '.join(ENGINE_KINDS)}, "
                              f"got {_fmt(self.engine)}")
        if not self.model_path.strip():
            raise ConfigError("model_path: must be a non-empty model name or path")
        if not re.match(r"^https?://[^\s/]+", self.base_url):
            raise ConfigError(
                f"base_url: must be an http:// or https:// URL, got {_fmt(self.base_url)}"
            )
        if self.api_key in ("None", "none", "null", ""):
            # the paper's configs write `api_key: None`, which YAML reads as a string
            object.__setattr__(self, "api_key", None)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeParams:
    """``node`` (optional): local name, data directory and identity key file."""

    name: str = "node"
    data_dir: Path = Path(".wwwserve/node")
    key_path: Path | None = None

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ConfigError(
                "name: must be 1-64 letters, digits, '.', '_' or '-', "
                f"got {_fmt(self.name)}"
            )

    @property
    def identity_path(self) -> Path:
        """Where the node's key lives: ``key_path``, or ``<data_dir>/node.key``."""
        return self.key_path if self.key_path is not None else self.data_dir / "node.key"


#: the GossipSub degrees (D) a node accepts, lowest and highest
GOSSIP_DEGREES = (1, 16)


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkParams:
    """``network`` (optional): which network to join and how to reach it.

    ``listen`` defaults to ``/ip4/<server_params.ip>/tcp/<server_params.port>``. ``bootstrap``
    lists full multiaddrs of members (``/ip4/127.0.0.1/tcp/5778/p2p/12D3KooW...``).
    """

    network_id: str = "wwwserve-local"
    listen: tuple[str, ...] = ()
    bootstrap: tuple[str, ...] = ()
    target_degree: int = 8
    #: GossipSub's D: each topic's mesh keeps between D - 1 and 2 D peers (lower: less CPU
    #: per message on crowded machines, fewer redundant paths)
    gossip_degree: int = 4
    #: the network's genesis file (``wwwserve genesis``); without one, credit is kept in
    #: memory by each node for itself (no ledger)
    genesis: Path | None = None

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.network_id):
            raise ConfigError(
                "network_id: must be 1-64 letters, digits, '.', '_' or '-', "
                f"got {_fmt(self.network_id)}"
            )
        for key, addrs in (("listen", self.listen), ("bootstrap", self.bootstrap)):
            for i, addr in enumerate(addrs):
                problem = _multiaddr_problem(addr, peer=key == "bootstrap")
                if problem is not None:
                    raise ConfigError(
                        f"{key}[{i}]: {problem}; a multiaddr like /ip4/127.0.0.1/tcp/5778"
                        f"{'/p2p/<peer id> (see `wwwserve id`)' if key == 'bootstrap' else ''}"
                        f", got {_fmt(addr)}")
        _positive(self, "target_degree")
        low, high = GOSSIP_DEGREES
        if not low <= self.gossip_degree <= high:
            raise ConfigError(f"gossip_degree: must be an integer in [{low}, {high}], "
                              f"got {_fmt(self.gossip_degree)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayParams:
    """``gateway`` (optional): the OpenAI-compatible HTTP address for this node's users."""

    host: str = "127.0.0.1"
    port: int = 8100  # not 8000 (vLLM's default) nor 30000 (SGLang's)
    enabled: bool = True
    #: if set, users must send ``Authorization: Bearer <api_key>``
    api_key: str | None = None
    #: request bodies above this many bytes are refused (413)
    max_body_bytes: int = 4 * 1024 * 1024
    #: default and maximum time budget of one request, in seconds
    request_timeout: float = 600.0
    #: browser origins allowed to call the API (CORS); ``*`` allows any; none by default
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _port(self, "port")
        _positive(self, "max_body_bytes")
        _positive(self, "request_timeout")
        for i, origin in enumerate(self.cors_origins):
            if origin != "*" and not re.match(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$",
                                              str(origin)):
                raise ConfigError(
                    f"cors_origins[{i}]: must be '*' or an origin like "
                    f"https://app.example.com (scheme, host, optional port), got {_fmt(origin)}")
        if self.api_key in ("None", "none", "null", ""):
            object.__setattr__(self, "api_key", None)


@dataclass(frozen=True, slots=True, kw_only=True)
class MembershipParams:
    """``membership`` (optional): gossip heartbeat timing, in seconds.

    A peer silent for ``suspect_timeout`` is suspected; silent for ``peer_timeout`` it is
    removed. Heartbeats stamped more than ``max_heartbeat_age`` away from our clock are stale.
    """

    heartbeat_interval: float = 1.0
    suspect_timeout: float = 2.5
    peer_timeout: float = 5.0
    max_heartbeat_age: float = 30.0

    def __post_init__(self) -> None:
        for name in ("heartbeat_interval", "suspect_timeout", "peer_timeout",
                     "max_heartbeat_age"):
            _positive(self, name)
        if self.peer_timeout <= self.heartbeat_interval:
            raise ConfigError(
                f"peer_timeout: must be greater than heartbeat_interval "
                f"({self.heartbeat_interval}), got {self.peer_timeout}"
            )
        if self.suspect_timeout > self.peer_timeout:
            raise ConfigError(
                f"suspect_timeout: must be at most peer_timeout ({self.peer_timeout}), "
                f"got {self.suspect_timeout}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class DuelParams:
    """``duel`` (optional): duel-and-judge settings of this node.

    The amounts a settlement moves are the network's (its genesis), not a node's.
    """

    #: share of offloaded requests also sent to a second executor and judged
    p_inspect: float = 0.1
    #: judges per duel, drawn by stake; a network too small to seat that many seats as
    #: many as it can (in a 4-node network: one), down to ``min_judges``
    k_judges: int = 3
    #: the fewest judges a duel is judged by (with fewer candidates it is void)
    min_judges: int = 1
    #: seconds judges get to evaluate and commit their votes
    judge_timeout: float = 300.0
    #: seconds judges get to reveal their votes once all commits are in
    reveal_timeout: float = 30.0
    #: max_tokens of a judge's evaluation (room for a reasoning model's thoughts)
    judge_max_tokens: int = 2048
    #: judgements this node works on at once for others (more are refused)
    max_judging: int = 32

    def __post_init__(self) -> None:
        _probability(self, "p_inspect")
        for name in ("k_judges", "min_judges", "judge_timeout", "reveal_timeout",
                     "judge_max_tokens", "max_judging"):
            _positive(self, name)
        if self.min_judges > self.k_judges:
            raise ConfigError(f"min_judges: must be at most k_judges ({self.k_judges}), got "
                              f"{_fmt(self.min_judges)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingParams:
    """``logging`` (optional): log levels of ``wwwserve node`` (``-v`` on the command line
    lowers ``level`` further). Records carry the id of the request being handled."""

    #: DEBUG, INFO, WARNING, ERROR or CRITICAL
    level: str = "WARNING"
    #: py-libp2p's own logger (it logs routine events at ERROR, hence quiet by default)
    libp2p_level: str = "CRITICAL"

    def __post_init__(self) -> None:
        for name in ("level", "libp2p_level"):
            value = getattr(self, name)
            if not isinstance(value, str) or value.upper() not in _LOG_LEVELS:
                raise ConfigError(f"{name}: must be one of {', '.join(_LOG_LEVELS)}, "
                                  f"got {_fmt(value)}")
            object.__setattr__(self, name, value.upper())


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """A whole node configuration (one YAML file)."""

    server_params: ServerParams = field(default_factory=ServerParams)
    ledger_params: LedgerParams = field(default_factory=LedgerParams)
    models: tuple[ModelConfig, ...] = ()
    node: NodeParams = field(default_factory=NodeParams)
    network: NetworkParams = field(default_factory=NetworkParams)
    gateway: GatewayParams = field(default_factory=GatewayParams)
    membership: MembershipParams = field(default_factory=MembershipParams)
    duel: DuelParams = field(default_factory=DuelParams)
    dispatch: DispatchParams = field(default_factory=DispatchParams)
    logging: LoggingParams = field(default_factory=LoggingParams)

    def __post_init__(self) -> None:
        seen: dict[str, int] = {}
        for i, model in enumerate(self.models):
            if model.model_path in seen:
                raise ConfigError(
                    f"models[{i}].model_path: duplicate model {model.model_path!r} "
                    f"(already models[{seen[model.model_path]}]); each model may appear once"
                )
            seen[model.model_path] = i

    @property
    def listen_addrs(self) -> tuple[str, ...]:
        """The p2p listen multiaddrs: ``network.listen`` or one built from server_params."""
        if self.network.listen:
            return self.network.listen
        return (f"/ip4/{self.server_params.ip}/tcp/{self.server_params.port}",)


# --------------------------------------------------------------------------------------------
# loading


class _Invalid(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               Path: "a path string"}


def _convert(tp: Any, value: Any, path: str, base: Path) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None:
            return None
        return _convert(inner[0], value, path, base)
    if origin is tuple:
        if not isinstance(value, list):
            raise _Invalid(path, f"must be a list, got {_fmt(value)}")
        return tuple(_convert(args[0], v, f"{path}[{i}]", base) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build(tp, value, path, base)
    if tp is float:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise _Invalid(path, f"must be a number, got {_fmt(value)}")
        return float(value)
    if tp is Path:
        if type(value) is not str or not value:
            raise _Invalid(path, f"must be a path string, got {_fmt(value)}")
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p
    if type(value) is not tp:
        raise _Invalid(path, f"must be {_TYPE_NAMES.get(tp, tp.__name__)}, got {_fmt(value)}")
    return value


def _build(cls: type[T], data: Any, path: str, base: Path) -> T:
    where = path or "top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _Invalid(where, f"must be a mapping of keys to values, got {_fmt(data)}")
    assert dataclasses.is_dataclass(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise _Invalid(_join(path, str(key)), f"unknown key (allowed here: {allowed})")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], _join(path, name), base)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _Invalid(_join(path, name), "required key is missing")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        # the dataclass names the offending field first: "field: message"
        text = str(exc)
        key, sep, rest = text.partition(": ")
        if sep and re.match(r"^[\w\[\].]+$", key):
            raise _Invalid(_join(path, key), rest) from None
        raise _Invalid(where, text) from None


def build_section(cls: type[T], data: Any, *, source: str, base_dir: Path | None = None) -> T:
    """Build any config-style frozen dataclass ``cls`` from parsed YAML, with the same
    checks and messages as node configs (unknown keys, types, the key path): a
    ``ConfigError`` naming ``source``. Used for scenario files too."""
    try:
        return _build(cls, data, "", base_dir if base_dir is not None else Path.cwd())
    except _Invalid as exc:
        raise ConfigError(f"{source}: {exc.path}: {exc.message}") from None


def config_from_dict(data: Any, *, source: str = "<config>", base_dir: Path | None = None,
                     name: str | None = None) -> NodeConfig:
    """Build a ``NodeConfig`` from parsed YAML (a dict), validating everything.

    ``source`` names the origin in error messages; relative paths resolve against
    ``base_dir`` (default: the current directory). ``name`` is the default node name.
    """
    base = base_dir if base_dir is not None else Path.cwd()
    if isinstance(data, dict) and name is not None:
        node = data.get("node")
        if node is None or (isinstance(node, dict) and "name" not in node):
            node = dict(node or {})
            node["name"] = name
            node.setdefault("data_dir", f".wwwserve/{name}")
            data = {**data, "node": node}
    try:
        return _build(NodeConfig, data, "", base)
    except _Invalid as exc:
        raise ConfigError(f"{source}: {exc.path}: {exc.message}") from None


def read_config_data(path: str | Path) -> dict[str, Any]:
    """A node YAML file's mapping, read but not yet validated (``config_from_dict()``
    does that); an unreadable or malformed file is a ``ConfigError``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{p}: invalid YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(f"{p}: top level: file is empty (expected a mapping with at least "
                          "server_params and models)")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level: must be a mapping of sections, got "
                          f"{type(data).__name__}")
    return data


def config_name(path: str | Path) -> str:
    """The default node name of the config file at ``path`` (its file name's stem)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", Path(path).stem)[:64] or "node"


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate a node YAML file; every problem is a ``ConfigError``."""
    p = Path(path)
    return config_from_dict(read_config_data(p), source=str(p), base_dir=p.resolve().parent,
                            name=config_name(p))
