"""Inference engines: the ``Engine`` protocol, the simulated engine and its profiles."""

from .base import (
    DEFAULT_PLANNED_TOKENS,
    MAX_EXTRA_BYTES,
    RESERVED_FIELDS,
    ChatMessage,
    Chunk,
    CompletionRequest,
    Emit,
    Engine,
    EngineLoad,
    Usage,
    approx_tokens,
    visible_text,
    with_defaults,
)
from .scraped import Scraped
from .sim import Profile, SimEngine, get_profile, profile_names

__all__ = [
    "DEFAULT_PLANNED_TOKENS",
    "MAX_EXTRA_BYTES",
    "RESERVED_FIELDS",
    "ChatMessage",
    "Chunk",
    "CompletionRequest",
    "Emit",
    "Engine",
    "EngineLoad",
    "Profile",
    "Scraped",
    "SimEngine",
    "Usage",
    "approx_tokens",
    "get_profile",
    "profile_names",
    "visible_text",
    "with_defaults",
]
