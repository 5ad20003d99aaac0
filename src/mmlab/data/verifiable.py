"""RL prompts with verifiable answers: GSM8K's "#### N" answers and the reward that checks a completion.

GSM8K answers are a worked solution ending in a line ``#### <number>``. The reward of a completion is
1.0 when the number it ends with (after ``####`` if it writes one, else its last number) equals the
reference, else 0.0: no judge model, nothing to game but the answer itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from mmlab.data.corpus import iter_jsonl
from mmlab.data.registry import DataError

# A number: thousands groups of exactly three digits ("1,000", not "1,2,3" which is three numbers), an
# optional fraction, or a bare fraction (".5"). A minus sign counts only where it cannot be a hyphen or a
# range ("ages 3-5" holds 3 and 5, not -5).
_NUMBER = r"(?<![\w.])-?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?![\d,]*\d)"
_FINAL = re.compile(r"####\s*[$€£]?\s*(" + _NUMBER + ")")
_ANY = re.compile(_NUMBER)


@dataclass(frozen=True)
class MathItem:
    question: str
    solution: str  # the worked solution, without the final "#### N" line
    answer: str  # the final number, normalised ("1,000" -> "1000", "3.50" -> "3.5")


def normalise_number(text: str) -> str:
    """One spelling per value: "1,000" -> "1000", "3.50" -> "3.5", ".5" -> "0.5", "-0" -> "0"."""
    try:
        d = Decimal(text.replace(",", "").strip())
    except InvalidOperation:
        return text.strip()
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def extract_answer(completion: str) -> str | None:
    """The number a completion commits to: after its last "####", else its last number; None if none."""
    finals = _FINAL.findall(completion)
    if finals:
        return normalise_number(finals[-1])
    numbers = _ANY.findall(completion)
    return normalise_number(numbers[-1]) if numbers else None


def math_reward(completion: str, answer: str) -> float:
    return 1.0 if extract_answer(completion) == normalise_number(answer) else 0.0


def load_gsm8k(path: str | Path) -> list[MathItem]:
    items = []
    for lineno, record in iter_jsonl(path, with_lines=True):
        q, a = record.get("question"), record.get("answer")
        if not isinstance(q, str) or not isinstance(a, str):
            raise DataError(f"{path}:{lineno}: expected string fields 'question' and 'answer'")
        final = _FINAL.findall(a)
        if not final:
            raise DataError(f"{path}:{lineno}: the answer has no final '#### <number>' line")
        solution = a[: a.rfind("####")].rstrip()
        items.append(MathItem(q, solution, normalise_number(final[-1])))
    return items
