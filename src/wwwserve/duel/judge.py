"""Judging: the pairwise judge prompt, a robust verdict parser, and simulated quality.

**The prompt.** A judge's engine gets a system message (:data:`JUDGE_SYSTEM`) and a user
message holding the user's request and the two answers between tags (:func:`judge_messages`).
It is asked to reason briefly if it likes and to end with one line ``Verdict: A``,
``Verdict: B`` or ``Verdict: tie``. :func:`parse_verdict` takes the last such line (after
dropping any ``<think>`` block), or a reply that is nothing but ``A``, ``B`` or ``tie``;
anything else is an abstention.

**Simulated quality** (the simulated world's stand-in for answer quality). A simulated engine
draws each answer's quality from its model's latent quality plus Gaussian noise
(:attr:`QualityModel.answer_sigma`) and writes it into the answer as a marker
(:func:`quality_marker`). A simulated judge reads the two markers (an answer without one,
e.g. garbage, has :data:`GARBAGE_QUALITY`) and votes with the Rao–Kupper extension of the
Bradley–Terry model: ``P(A) = σ(qa - qb - η)``, ``P(B) = σ(qb - qa - η)``, tie otherwise.
:func:`outcome_probabilities` gives the resulting duel outcome with ``k`` judges and the
majority rule, and :func:`calibrate` finds latent qualities that reproduce target win rates
(the shipped profiles' values come from it; see ``profiles.yaml``).
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .evidence import decide

__all__ = [
    "DEFAULT_MODEL",
    "GARBAGE_QUALITY",
    "JUDGE_SYSTEM",
    "QualityModel",
    "calibrate",
    "class_win_rates",
    "is_judge_prompt",
    "judge_messages",
    "outcome_probabilities",
    "parse_verdict",
    "quality_marker",
    "read_quality",
    "split_judge_prompt",
]

JUDGE_SYSTEM = (
    "You judge answers for a wwwserve network. You get a user's request and two answers, "
    "A and B, written by different assistants. Decide which answer serves the user better: "
    "correctness first, then completeness, clarity and following the request's "
    "instructions. Do not let the order, length or style of the answers sway you. You may "
    "reason briefly. The last line of your reply must be exactly one of: 'Verdict: A', "
    "'Verdict: B', 'Verdict: tie'."
)

_USER = ("<request>\n{question}\n</request>\n\n<answer_a>\n{a}\n</answer_a>\n\n"
         "<answer_b>\n{b}\n</answer_b>\n\nWhich answer is better?")
_SPLIT = re.compile(r"\A<request>\n(?P<q>.*)\n</request>\n\n<answer_a>\n(?P<a>.*)\n</answer_a>"
                    r"\n\n<answer_b>\n(?P<b>.*)\n</answer_b>\n\nWhich answer is better\?\Z",
                    re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_VERDICT = re.compile(r"verdict\W{0,8}(a|b|tie)\b", re.IGNORECASE)
_BARE = re.compile(r"\A\W*(a|b|tie)\W*\Z", re.IGNORECASE)
_MARKER = re.compile(r"\A⟦q=([+-]?\d+(?:\.\d+)?)⟧")

#: The quality a simulated judge gives an answer without a quality marker (garbage).
GARBAGE_QUALITY = -8.0


def judge_messages(question: str, answer_a: str, answer_b: str) -> tuple[tuple[str, str], ...]:
    """The (role, content) messages that ask a judge to compare two answers."""
    return (("system", JUDGE_SYSTEM),
            ("user", _USER.format(question=question, a=answer_a, b=answer_b)))


def is_judge_prompt(messages: Sequence[tuple[str, str]]) -> bool:
    """True if ``messages`` are a judge prompt built by :func:`judge_messages`."""
    return len(messages) == 2 and messages[0] == ("system", JUDGE_SYSTEM)


def split_judge_prompt(user_content: str) -> tuple[str, str, str] | None:
    """The (request, answer A, answer B) of a judge prompt's user message, or None."""
    m = _SPLIT.match(user_content)
    return (m["q"], m["a"], m["b"]) if m else None


def parse_verdict(text: str) -> str:
    """``"A"``, ``"B"``, ``"tie"`` or ``"abstain"`` from a judge's reply (never raises)."""
    body = _THINK.sub("", text)
    if "<think>" in body.lower():  # an unfinished thought: no verdict was given
        return "abstain"
    found = _VERDICT.findall(body)
    if found:
        v = found[-1].lower()
    else:
        bare = _BARE.match(body)
        if bare is None:
            return "abstain"
        v = bare[1].lower()
    return "tie" if v == "tie" else v.upper()


def quality_marker(quality: float) -> str:
    """The marker a simulated engine puts at the start of an answer of ``quality``."""
    return f"⟦q={quality:+.4f}⟧ "


def read_quality(answer: str) -> float:
    """The quality a simulated judge sees in ``answer`` (:data:`GARBAGE_QUALITY` if none)."""
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
