"""Simulated answer quality: the simulated world's stand-in for how good an answer is.

A simulated engine draws each answer's quality from its model's latent quality plus Gaussian
noise (``QualityModel.answer_sigma``) and writes it into the answer as a marker
(``quality_marker()``). A simulated judge reads the two markers (an answer without one,
e.g. garbage, has ``GARBAGE_QUALITY``) and votes with the Rao–Kupper extension of the
Bradley–Terry model: ``P(A) = σ(qa - qb - η)``, ``P(B) = σ(qb - qa - η)``, tie otherwise.
``outcome_probabilities()`` gives the resulting duel outcome with ``k`` judges and the
majority rule, and ``calibrate()`` finds latent qualities that reproduce target win rates
(the shipped profiles' values come from it; see ``profiles.yaml``).
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..evidence import decide

__all__ = [
    "DEFAULT_MODEL",
    "GARBAGE_QUALITY",
    "QualityModel",
    "calibrate",
    "class_win_rates",
    "outcome_probabilities",
    "quality_marker",
    "read_quality",
]

_MARKER = re.compile(r"\A⟦q=([+-]?\d+(?:\.\d+)?)⟧")

#: The quality a simulated judge gives an answer without a quality marker (garbage).
GARBAGE_QUALITY = -8.0


def quality_marker(quality: float) -> str:
    """The marker a simulated engine puts at the start of an answer of ``quality``."""
    return f"⟦q={quality:+.4f}⟧ "


def read_quality(answer: str) -> float:
    """The quality a simulated judge sees in ``answer`` (``GARBAGE_QUALITY`` if none)."""
    m = _MARKER.match(answer)
    return float(m[1]) if m else GARBAGE_QUALITY


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@dataclass(frozen=True, slots=True)
class QualityModel:
    """Simulated answer quality and judging (see the module docs)."""

    #: spread of one answer's quality around its model's latent quality
    answer_sigma: float = 2.0
    #: Rao–Kupper tie threshold: a judge calls a tie more often the larger it is
    tie_margin: float = 0.5

    def answer_quality(self, latent: float, rng: random.Random) -> float:
        """One answer's quality for a model of ``latent`` quality."""
        return latent + rng.gauss(0.0, self.answer_sigma)

    def vote_probabilities(self, qa: float, qb: float) -> tuple[float, float, float]:
        """P(A), P(B), P(tie) of one judge comparing answers of quality ``qa`` and ``qb``."""
        pa = _sigmoid(qa - qb - self.tie_margin)
        pb = _sigmoid(qb - qa - self.tie_margin)
        return pa, pb, max(0.0, 1.0 - pa - pb)

    def vote(self, answer_a: str, answer_b: str, rng: random.Random) -> str:
        """A simulated judge's verdict on two answers (reads their quality markers)."""
        pa, pb, _ = self.vote_probabilities(read_quality(answer_a), read_quality(answer_b))
        u = rng.random()
        return "A" if u < pa else "B" if u < pa + pb else "tie"


#: The quality model the shipped profiles are calibrated for.
DEFAULT_MODEL = QualityModel()


def outcome_probabilities(qx: float, qy: float, model: QualityModel = DEFAULT_MODEL,
                          k_judges: int = 3, points: int = 161) -> tuple[float, float, float]:
    """P(x wins), P(y wins), P(tie) of a duel between models of latent quality ``qx`` and
    ``qy`` judged by ``k_judges`` simulated judges under the majority rule.

    Integrates over the two answers' quality difference (Gaussian) on a grid of ``points``.
    """
    sd = model.answer_sigma * math.sqrt(2.0)
    mean = qx - qy
    combos = list(itertools.product((0, 1, 2), repeat=k_judges))
    totals = [0.0, 0.0, 0.0]
    weight_sum = 0.0
    for i in range(points):
        z = -6.0 + 12.0 * i / (points - 1)
        w = math.exp(-0.5 * z * z)
        d = mean + sd * z if sd > 0 else mean
        p = model.vote_probabilities(d, 0.0)
        for combo in combos:
            pc = w
            counts = [0, 0, 0]
            for c in combo:
                pc *= p[c]
                counts[c] += 1
            result = decide(*counts)
            totals["xy".find(result) if result != "tie" else 2] += pc
        weight_sum += w
    return totals[0] / weight_sum, totals[1] / weight_sum, totals[2] / weight_sum


def class_win_rates(qualities: Sequence[float], model: QualityModel = DEFAULT_MODEL,
                    k_judges: int = 3) -> list[float]:
    """Each class's expected win rate (ties count half) against the others, equally often."""
    rates = []
    for i, qi in enumerate(qualities):
        others = [qj for j, qj in enumerate(qualities) if j != i]
        total = 0.0
        for qj in others:
            px, _, pt = outcome_probabilities(qi, qj, model, k_judges)
            total += px + pt / 2
        rates.append(total / len(others))
    return rates


def calibrate(targets: Sequence[float], model: QualityModel = DEFAULT_MODEL,
              k_judges: int = 3, *, iterations: int = 60) -> list[float]:
    """Latent qualities (the first fixed at 0) whose win rates come closest to ``targets``.

    Targets need not sum to ``n / 2`` (the paper's do not, quite): the fit minimises the
    squared errors by fixed-point steps on the centred targets.
    """
    n = len(targets)
    centred = [t - (sum(targets) / n - 0.5) for t in targets]
    q = [0.0] * n
    for _ in range(iterations):
        rates = class_win_rates(q, model, k_judges)
        q = [qi + 4.0 * (t - r) for qi, t, r in zip(q, centred, rates, strict=True)]
        q = [qi - q[0] for qi in q]
    return q
