"""How often and how soon one request may go back to a local engine that failed it (sans-IO).

A request whose local engine fails (an HTTP 5xx, a 429, a broken stream) is not sent
straight back to it: the engine rests for this request for a capped exponential delay with
jitter (``base * 2**(n-1)``, at most ``cap``, times a uniform draw in [0.5, 1]), or for
what the engine's ``Retry-After`` asked (up to ``cap``), and after ``attempts`` failures it
is not tried again for this request at all. Meanwhile the request may go to a peer; when
nobody can serve it the user gets the engine's own verdict (``Backoff.error()``).

The delays draw from the node's seeded RNG (the simulator's runs stay reproducible), which
is why this is a small class rather than a retry library's decorator: the retry is one
branch of the placement loop (run here, offload, queue or wait), not a call to repeat.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from ..errors import EngineError, UpstreamError
from .policy import NodeView

__all__ = ["Backoff", "BackoffParams"]


@dataclass(frozen=True, slots=True)
class BackoffParams:
    """Limits on retrying a failed local engine for one request."""

    #: failures of local engines one request may see before it stops trying them
    attempts: int = 3
    #: seconds of rest after the first failure (doubling after each further one)
    base: float = 0.25
    #: the most seconds of rest after any failure, ``Retry-After`` included
    cap: float = 8.0


@dataclass(slots=True)
class Backoff:
    """One request's record of its local engines' failures."""

    params: BackoffParams = field(default_factory=BackoffParams)
    #: local engine failures so far
    failures: int = 0
    #: the most recent failure
    last: EngineError | None = None
    #: local model name -> the time before which this request does not use it
    resting: dict[str, float] = field(default_factory=dict)

    def failed(self, model: str, exc: EngineError, now: float, rng: random.Random) -> float:
        """Note that ``model``'s engine failed at ``now``; returns the seconds it rests."""
        self.failures += 1
        self.last = exc
        p = self.params
        if exc.retry_after is not None:
            delay = min(p.cap, exc.retry_after)
        else:
            delay = min(p.cap, p.base * 2 ** (self.failures - 1)) * rng.uniform(0.5, 1.0)
        self.resting[model] = now + delay
        return delay

    @property
    def exhausted(self) -> bool:
        """True once no local engine is to be tried again for this request."""
        return self.failures >= self.params.attempts

    def filter(self, view: NodeView, now: float) -> NodeView:
        """``view`` without the local models resting now (all of them once exhausted)."""
        if not self.failures:
            return view
        kept = () if self.exhausted else tuple(
            m for m in view.models if self.resting.get(m.name, 0.0) <= now)
        return view if len(kept) == len(view.models) else replace(view, models=kept)

    def wake_at(self, now: float) -> float | None:
        """When the next resting local model may be tried again (None: none rests)."""
        if self.exhausted:
            return None
        later = [t for t in self.resting.values() if t > now]
        return min(later) if later else None

    def error(self, context: str) -> UpstreamError:
        """What the user is told when nobody else could serve the request: the engine's
        own status (a 429 stays a 429 with its ``Retry-After``), else a 502."""
        assert self.last is not None
        status = 429 if self.last.status == 429 else 502
        retry_after = self.last.retry_after if status == 429 else None
        if status == 429 and retry_after is None:
            retry_after = 1.0
        return UpstreamError(f"{context}: {self.last}", status=status, retry_after=retry_after)
