"""HTTP: the OpenAI-compatible API (gateway and ``sim-engine``) served with hypercorn on trio."""

from .openai_api import DEFAULT_MAX_BODY, OpenAIApp, parse_completion
from .server import serve_http
from .sim_server import SimEngineServer, sim_engine_app

__all__ = [
    "DEFAULT_MAX_BODY",
    "OpenAIApp",
    "SimEngineServer",
    "parse_completion",
    "serve_http",
    "sim_engine_app",
]
