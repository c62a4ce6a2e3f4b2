"""Inference engines: the :class:`Engine` protocol, the simulated engine and its profiles."""

from .base import (
    ChatMessage,
    Chunk,
    CompletionRequest,
    Emit,
    Engine,
    EngineLoad,
    Usage,
    approx_tokens,
)
from .sim import Profile, SimEngine, get_profile, profile_names

__all__ = [
    "ChatMessage",
    "Chunk",
    "CompletionRequest",
    "Emit",
    "Engine",
    "EngineLoad",
    "Profile",
    "SimEngine",
    "Usage",
    "approx_tokens",
    "get_profile",
    "profile_names",
]
