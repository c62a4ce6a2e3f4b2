"""Capture every log record, for tests that cannot use pytest's function-scoped ``caplog``
(one hypothesis example after another)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def captured_logs() -> Iterator[list[logging.LogRecord]]:
    """Yield a list that receives every record logged while the block runs."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield records
    finally:
        root.removeHandler(handler)


def tracebacks(records: list[logging.LogRecord]) -> list[str]:
    """The messages of warnings and errors that were logged with a traceback."""
    return [r.getMessage() for r in records if r.exc_info and r.levelno >= logging.WARNING]
