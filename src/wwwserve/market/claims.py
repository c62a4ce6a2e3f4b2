"""Claimed models, verified by use (sans-IO: the caller passes the time).

A peer may advertise a model it does not serve; its users' requests would otherwise wait
for it until their deadline. So a peer that says it does not serve a model, or that has
never accepted it and refused (or not answered) ``UNPROVEN_REFUSALS`` times in a row, is
not asked for that model for ``DEMOTE_SECONDS``. A peer that has accepted the model once
is never demoted for being busy.
"""

from __future__ import annotations

import logging
from collections import Counter

__all__ = ["DEMOTE_SECONDS", "UNPROVEN_REFUSALS", "Claims"]

logger = logging.getLogger(__name__)

#: seconds a peer that does not serve a model it claims is not asked for it
DEMOTE_SECONDS = 60.0
#: Refusals (or silences) in a row from a peer that has never accepted a model it claims,
#: after which it is demoted for that model as if it had said it does not serve it.
UNPROVEN_REFUSALS = 4
#: most (peer, model) pairs each table remembers (strangers can make up any number)
TABLE_LIMIT = 4096


class Claims:
    """Which peers' model claims hold (see the module docs)."""

    def __init__(self, stats: Counter[str]) -> None:
        self.stats = stats
        #: (peer, model) -> until when the peer is not asked for a model it claims
        self._no_model: dict[tuple[str, str], float] = {}
        #: (peer, model) pairs the peer has accepted at least once (its claim is proven),
        #: and refusals in a row from peers not (yet) proven
        self._proven: dict[tuple[str, str], None] = {}
        self._unproven: Counter[tuple[str, str]] = Counter()

    def demoted(self, peer: str, model: str, now: float) -> bool:
        """True while ``peer`` is not to be asked for ``model``."""
        until = self._no_model.get((peer, model))
        if until is None:
            return False
        if until <= now:
            del self._no_model[(peer, model)]
            return False
        return True

    def accepted(self, peer: str, model: str) -> None:
        """``peer`` accepted a request for ``model``: its claim is proven."""
        if model == "auto":
            return
        key = (peer, model)
        self._proven[key] = None
        self._unproven.pop(key, None)
        while len(self._proven) > TABLE_LIMIT:
            del self._proven[next(iter(self._proven))]

    def refused(self, peer: str, model: str, reason: str | None, now: float) -> None:
        """``peer`` refused a request for ``model`` for ``reason`` (None: it did not answer
        in time)."""
        if model == "auto":
            return
        key = (peer, model)
        if reason == "model":
            why = "says it does not serve"
        elif key in self._proven:
            return
        else:
            self._unproven[key] += 1
            if self._unproven[key] < UNPROVEN_REFUSALS:
                if len(self._unproven) > TABLE_LIMIT:
                    self._unproven.clear()
                return
            why = f"refused {UNPROVEN_REFUSALS} times in a row and never served"
        self._unproven.pop(key, None)
        self._no_model[key] = now + DEMOTE_SECONDS
        while len(self._no_model) > TABLE_LIMIT:
            del self._no_model[next(iter(self._no_model))]
        self.stats["model_demoted"] += 1
        logger.info("%s %s %s: not asked for it for %g s", peer, why, model, DEMOTE_SECONDS)
