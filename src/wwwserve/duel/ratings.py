"""Bradley–Terry ratings of peers from duel outcomes.

Each settled duel is a game between its two executors (a tie is half a win each). Strengths
are the maximum-likelihood Bradley–Terry fit by Hunter's MM iterations (Hunter 2004, "MM
algorithms for generalized Bradley–Terry models"), with a weak prior (every peer also drew
``prior`` games against a reference of strength 1) so undefeated or winless peers still
get finite ratings. Ratings are on the Elo scale: ``1500 + 400 log10(strength)``.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass

__all__ = ["PeerRecord", "Ratings"]


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A peer's duel results and rating."""

    wins: int
    losses: int
    ties: int
    rating: float


class Ratings:
    """Accumulates duel outcomes; ``table()`` fits and returns the ratings."""

    def __init__(self, *, prior: float = 1.0, iterations: int = 200) -> None:
        self.prior = prior
        self.iterations = iterations
        self._games: Counter[tuple[str, str]] = Counter()  # (a, b), a < b -> games
        self._score: dict[str, float] = defaultdict(float)  # wins + ties / 2
        self._wins: Counter[str] = Counter()
        self._losses: Counter[str] = Counter()
        self._ties: Counter[str] = Counter()
        self._cache: dict[str, PeerRecord] | None = None

    def __len__(self) -> int:
        return sum(self._games.values())

    def record(self, winner: str, loser: str, *, tie: bool = False) -> None:
        """One duel between ``winner`` and ``loser`` (or a tie between them)."""
        if winner == loser:
            raise ValueError("a peer cannot duel itself")
        self._games[min(winner, loser), max(winner, loser)] += 1
        if tie:
            for p in (winner, loser):
                self._score[p] += 0.5
                self._ties[p] += 1
        else:
            self._score[winner] += 1.0
            self._wins[winner] += 1
            self._losses[loser] += 1
        self._cache = None

    def strengths(self) -> dict[str, float]:
        """Bradley–Terry strengths (geometric mean 1 over the peers)."""
        opponents: defaultdict[str, list[tuple[str, int]]] = defaultdict(list)
        for (a, b), n in self._games.items():
            opponents[a].append((b, n))
            opponents[b].append((a, n))
        peers = sorted(opponents)
        p = dict.fromkeys(peers, 1.0)
        for _ in range(self.iterations):
            new = {}
            for i in peers:
                denom = self.prior / (p[i] + 1.0)
                denom += sum(n / (p[i] + p[j]) for j, n in opponents[i])
                new[i] = (self._score[i] + self.prior / 2) / denom
            delta = max((abs(math.log(new[i] / p[i])) for i in peers), default=0.0)
            p = new
            if delta < 1e-9:
                break
        if not p:
            return {}
        g = math.exp(sum(math.log(v) for v in p.values()) / len(p))
        return {k: v / g for k, v in p.items()}

    def table(self) -> dict[str, PeerRecord]:
        """Every rated peer's wins, losses, ties and Elo-scale rating."""
        if self._cache is None:
            self._cache = {
                peer: PeerRecord(self._wins[peer], self._losses[peer], self._ties[peer],
                                 round(1500.0 + 400.0 * math.log10(s), 1))
                for peer, s in self.strengths().items()}
        return self._cache
