"""The judge prompt and its verdict parser (the duel protocol's words, sans-IO).

A judge's engine gets a system message (``JUDGE_SYSTEM``) and a user message holding the
user's request and the two answers between tags (``judge_messages()``). It is asked to
reason briefly if it likes and to end with one line ``Verdict: A``, ``Verdict: B`` or
``Verdict: tie``. ``parse_verdict()`` takes the last such line (after dropping any
``<think>`` block), or a reply that is nothing but ``A``, ``B`` or ``tie``; anything else is
an abstention. The simulated engine recognises a judge prompt (``is_judge_prompt()``) and
answers it from ``wwwserve.engines.quality``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "JUDGE_SYSTEM",
    "is_judge_prompt",
    "judge_messages",
    "parse_verdict",
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



def judge_messages(question: str, answer_a: str, answer_b: str) -> tuple[tuple[str, str], ...]:
    """The (role, content) messages that ask a judge to compare two answers."""
    return (("system", JUDGE_SYSTEM),
            ("user", _USER.format(question=question, a=answer_a, b=answer_b)))


def is_judge_prompt(messages: Sequence[tuple[str, str]]) -> bool:
    """True if ``messages`` are a judge prompt built by ``judge_messages()``."""
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
