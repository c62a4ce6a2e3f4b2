"""The ``wwwserve`` command line: one module per command group.

Exit codes: 0 success (including Ctrl-C of a long-running command), 1 runtime failure,
2 bad usage or bad input (config, key file). Errors are one line on stderr, no traceback.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
