"""Typing shims.

py-libp2p depends on ``trio-typing``, whose ``trio-stubs`` shadow trio's own (newer) inline
types for mypy. ``TaskStatus`` lives in a different place in each; import it from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trio_typing import TaskStatus
else:
    from trio import TaskStatus

__all__ = ["TaskStatus"]
