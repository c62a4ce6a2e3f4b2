"""Logging in one place: levels, py-libp2p's logger, and per-request trace ids.

Every log record carries ``trace``: the id of the request being handled (``-`` outside
one). A request keeps its id across hops: the gateway takes it from the user's
``X-Request-Id`` header or makes one, the dispatcher logs under it, and an executor logs
its part of the same request under the same id. A duel's copy of a request gets a fresh
id (its executor must not tell it from an ordinary request); the requester logs the pair,
and judges log under ``duel-<duel id>``, which the requester logs too. So
``grep <request id>`` over the nodes' logs, then the duel id it names, follows one
request through requester, executors and judges.

    setup_logging("INFO", libp2p_level="WARNING")
    with tracing("req-42"):
        logger.info("...")   # ... INFO wwwserve.market.dispatch [req-42]: ...
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["LEVELS", "TraceFilter", "current_trace", "route_libp2p_logger", "setup_logging",
           "tracing"]

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMAT = "%(asctime)s %(levelname)s %(name)s [%(trace)s]: %(message)s"

_trace: ContextVar[str] = ContextVar("wwwserve_trace", default="-")


def current_trace() -> str:
    """The trace id of the request this task is handling (``-`` if none)."""
    return _trace.get()


@contextmanager
def tracing(trace_id: str) -> Iterator[None]:
    """Log under ``trace_id`` inside the block (and in tasks started from it)."""
    token = _trace.set(trace_id)
    try:
        yield
    finally:
        _trace.reset(token)


class TraceFilter(logging.Filter):
    """Adds ``record.trace`` (the current trace id) to every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Stamp the record; never drops one."""
        if not hasattr(record, "trace"):
            record.trace = _trace.get()
        return True


def setup_logging(level: str | int = "WARNING", *, libp2p_level: str | int = "CRITICAL",
                  fmt: str = FORMAT) -> None:
    """Configure the root logger once for a wwwserve process.

    ``level`` applies to wwwserve and everything else; ``libp2p_level`` to py-libp2p,
    whose own logger is routed through the same handler (it logs routine events such as
    a closed stream at ERROR, hence the quiet default).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_wwwserve", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(TraceFilter())
    handler._wwwserve = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    route_libp2p_logger(libp2p_level)


def route_libp2p_logger(level: str | int | None) -> None:
    """Send py-libp2p's records through the application's handlers at ``level`` (None:
    keep its level). ``import libp2p`` gives its logger no handler and stops propagation,
    so Python's last-resort handler would print them; and some of its modules pin their
    own level (the auto-connector logs at INFO), which is reset to follow ``libp2p``."""
    lp = logging.getLogger("libp2p")
    lp.handlers.clear()
    lp.propagate = True
    if level is not None:
        lp.setLevel(level)
    for name, child in list(logging.root.manager.loggerDict.items()):
        if name.startswith("libp2p.") and isinstance(child, logging.Logger):
            child.setLevel(logging.NOTSET)
