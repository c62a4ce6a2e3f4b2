"""Serving an ASGI app on trio with hypercorn.

A connection that is idle (no request in progress, including one that never completes its
headers) is closed after ``keep_alive`` seconds; headers are bounded by h11's 16 KiB; the
errors hypercorn answers itself come as OpenAI error envelopes.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import h11
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from .._compat import TaskStatus
from ..errors import ListenError

__all__ = ["serve_http"]

logger = logging.getLogger(__name__)


def _openai_error_responses() -> None:
    """Make hypercorn's own error answers (400 for a malformed request, 431 for headers
    that are too large, ...) OpenAI error envelopes like every other answer of ours.

    Hypercorn 0.18 writes them with an empty body in ``H11Protocol._send_error_response``;
    this replaces that method once (idempotent).
    """
    from hypercorn.protocol import h11 as hyper_h11

    if getattr(hyper_h11.H11Protocol, "_wwwserve_envelopes", False):
        return

    async def send_error(self: Any, status_code: int) -> None:
        phrase = HTTPStatus(status_code).phrase if status_code in HTTPStatus._value2member_map_ \
            else "error"
        body = json.dumps({"error": {"message": f"{phrase} (the HTTP request itself was "
                                                "malformed or too large)",
                                     "type": "invalid_request_error", "param": None,
                                     "code": status_code}}).encode()
        await self._send_h11_event(h11.Response(status_code=status_code, headers=[
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()), (b"connection", b"close"),
            *self.config.response_headers("h11")]))
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())

    hyper_h11.H11Protocol._send_error_response = send_error  # type: ignore[method-assign]
    hyper_h11.H11Protocol._wwwserve_envelopes = True  # type: ignore[attr-defined]


async def serve_http(app: Any, host: str, port: int, *, keep_alive: float = 30.0,
                     on_url: Callable[[str], None] | None = None,
                     task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` on ``host:port`` until cancelled; ``started`` with its base URL.

    ``port`` 0 picks a free port (the URL tells which; ``on_url`` is called with it too).
    Hypercorn's logs go to the ``hypercorn.error`` logger; access logs are off. Raises
    ``ListenError`` if the address cannot be bound.
    """
    # bind here, so a failure is ours to report and the socket is never leaked; hypercorn
    # takes the bound socket over by file descriptor
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    _openai_error_responses()
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = keep_alive
    config.keep_alive_max_requests = 1_000_000
    config.graceful_timeout = 1.0
    config.backlog = 1024

    async def start(*, task_status: TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await serve(app, config, mode="asgi", task_status=task_status)

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(start)
        url = binds[0]
        logger.info("HTTP on %s", url)
        if on_url is not None:
            on_url(url)
        task_status.started(url)
