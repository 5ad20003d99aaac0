"""RL prompts with verifiable answers: GSM8K's "#### N" answers and the reward that checks a completion.

GSM8K answers are a worked solution ending in a line ``#### <number>``. The reward of a completion is
1.0 when the number it ends with (after ``####`` if it writes one, else its last number) equals the
reference, else 0.0: no judge model, nothing to game but the answer itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mmlab.data.corpus import iter_jsonl
from mmlab.data.registry import DataError

_NUMBER = r"-?[\d,]*\.?\d+"
_FINAL = re.compile(r"####\s*(" + _NUMBER + ")")
_ANY = re.compile(_NUMBER)


@dataclass(frozen=True)
class MathItem:
    question: str
    solution: str  # the worked solution, without the final "#### N" line
    answer: str  # the final number, normalised ("1,000" -> "1000", "3.50" -> "3.5")


def normalise_number(text: str) -> str:
    text = text.replace(",", "").strip()
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


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
