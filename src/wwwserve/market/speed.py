"""Speed metering: each engine's decode speed, measured on the answers this node received.

A ``Meter`` times one answer's tokens from the first to the last; a ``SpeedBook``
keeps a moving average per engine (key: the executor's peer id, or our own for the local
engine) and says how many times faster than ours the fastest live peer is
(``NodeView.speed_ratio <wwwserve.market.policy.NodeView.speed_ratio>``).
"""

from __future__ import annotations

from collections.abc import Callable

from ..engines import Chunk

__all__ = ["SPEED_MIN_TOKENS", "SPEED_WEIGHT", "Meter", "SpeedBook"]

#: answers shorter than this (tokens) say too little about an engine's decode speed
SPEED_MIN_TOKENS = 32
#: weight of the latest answer in a decode speed's moving average
SPEED_WEIGHT = 0.2


class Meter:
    """Times one answer's tokens, from the first to the last (its decode speed)."""

    __slots__ = ("first", "last", "tokens")

    def __init__(self) -> None:
        self.first = self.last = 0.0
        self.tokens = 0

    def note(self, chunk: Chunk, now: float) -> None:
        """Count ``chunk``'s tokens, arrived at ``now`` (seconds)."""
        if chunk.tokens:
            if not self.tokens:
                self.first = now
            self.last = now
            self.tokens += chunk.tokens

    def speed(self) -> float | None:
        """Tokens per second after the first, or None for a short or instant answer."""
        seconds = self.last - self.first
        if self.tokens < SPEED_MIN_TOKENS or seconds <= 0:
            return None
        return (self.tokens - 1) / seconds


class SpeedBook:
    """Decode speeds (tokens per second, moving average) by engine owner."""

    def __init__(self, own: str) -> None:
        self.own = own
        self.speeds: dict[str, float] = {}

    def measured(self, who: str, meter: Meter) -> None:
        """Fold one answer's decode speed into ``who``'s average."""
        speed = meter.speed()
        if speed is not None:
            old = self.speeds.get(who)
            self.speeds[who] = speed if old is None else old + SPEED_WEIGHT * (speed - old)

    def ratio(self, live: Callable[[str], bool]) -> float:
        """How many times faster than our own engine the fastest peer for which ``live``
        holds has answered us (1.0 while either is unmeasured, or none is faster)."""
        own = self.speeds.get(self.own)
        if own is None:
            return 1.0
        best = max((v for p, v in self.speeds.items() if p != self.own and live(p)),
                   default=own)
        return max(1.0, best / own)
