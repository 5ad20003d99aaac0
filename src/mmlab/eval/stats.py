"""The statistics every evaluation reports: accuracy with its binomial standard error, next to chance.

A small model on a multiple-choice benchmark is often at chance: 27% on four-way questions is a coin
toss, not a skill. So every accuracy comes with the accuracy of guessing (the mean over items of
correct choices / choices) and a z-score against it. Under guessing, item i is right with probability
c_i, so the number right has variance sum c_i (1 - c_i) (a Poisson binomial): the accuracy of a guesser
spreads by ``sqrt(sum c_i (1 - c_i)) / n``. |z| < 1.96 reads "not distinguishable from chance" (95%).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

Z_95 = 1.96


def binomial_stderr(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` independent items: sqrt(p (1 - p) / n)."""
    return math.sqrt(p * (1 - p) / n) if n else math.nan


def accuracy_vs_chance(correct: Sequence[float], chance: Sequence[float]) -> dict[str, Any]:
    """Accuracy (mean of per-item credit in [0, 1]), its stderr, chance, z against chance and a verdict."""
    n = len(correct)
    if n == 0:
        return {"n": 0, "accuracy": math.nan, "stderr": math.nan, "chance": math.nan, "z_vs_chance": None,
                "verdict": "no items"}
    acc, base = sum(correct) / n, sum(chance) / n
    spread = math.sqrt(sum(c * (1 - c) for c in chance)) / n  # how far a guesser's accuracy wanders
    if spread > 0:
        z: float | None = (acc - base) / spread
    else:  # chance is exactly 0 (open answers) or 1: any difference at all is real
        z = None
    if z is None:
        distinct = acc != base
    else:
        distinct = abs(z) >= Z_95
    verdict = ("not distinguishable from chance" if not distinct else
               "above chance" if acc > base else "below chance")
    return {"n": n, "accuracy": acc, "stderr": binomial_stderr(acc, n), "chance": base,
            "z_vs_chance": z, "distinguishable_from_chance": distinct, "verdict": verdict}


def breakdown(records: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], str | None],
              credit: str = "correct") -> dict[str, dict[str, Any]]:
    """Accuracy per category (``key(record)``; None leaves a record out), each with its stderr and chance."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        k = key(r)
        if k is not None:
            groups[k].append(r)
    out = {}
    for k in sorted(groups, key=_natural):
        rs = groups[k]
        stats = accuracy_vs_chance([r[credit] for r in rs], [r.get("chance", 0.0) for r in rs])
        out[k] = {f: stats[f] for f in ("n", "accuracy", "stderr", "chance", "verdict")}
    return out


def length_bucket(n: int) -> str:
    """1, 2, 3-4, 5-8, 9-16, ...: buckets that double, for answer lengths."""
    if n <= 2:
        return str(n)
    lo = 2 ** math.ceil(math.log2(n)) // 2 + 1
    return f"{lo}-{2 * (lo - 1)}"


def _natural(s: str) -> tuple:
    head = s.split("-")[0]
    return (0, int(head), s) if head.isdigit() else (1, 0, s)
