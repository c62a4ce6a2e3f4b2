"""wwwserve: a decentralized, competitive market of LLM services over libp2p."""

from __future__ import annotations

from .config import NodeConfig, config_from_dict, load_config
from .errors import (
    ClosedError,
    ConfigError,
    IdentityError,
    OverlayError,
    PeerUnavailableError,
    ProtocolError,
    RemoteError,
    WWWServeError,
)
from .identity import Identity, load_or_create_identity

__version__ = "0.1.0"

__all__ = [
    "ClosedError",
    "ConfigError",
    "Identity",
    "IdentityError",
    "NodeConfig",
    "OverlayError",
    "PeerUnavailableError",
    "ProtocolError",
    "RemoteError",
    "WWWServeError",
    "__version__",
    "config_from_dict",
    "load_config",
    "load_or_create_identity",
]
