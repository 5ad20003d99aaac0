"""The statistics every evaluation reports: accuracy with a 95% interval, next to chance.

A small model on a multiple-choice benchmark is often at chance: 27% on four-way questions is a coin
toss, not a skill. So every accuracy comes with the accuracy of guessing (the mean over items of
correct choices / choices) and a z-score against it. Under guessing, item i is right with probability
c_i, so the number right has variance sum c_i (1 - c_i) (a Poisson binomial): the accuracy of a guesser
spreads by ``sqrt(sum c_i (1 - c_i)) / n``. |z| < 1.96 reads "not distinguishable from chance" (95%).

The interval around an accuracy is Wilson's, not the textbook ``p ± 1.96 sqrt(p (1 - p) / n)`` (Wald):
Wald's interval has zero width at p = 0 or 1 — "0 right out of 50, give or take 0" — and covers the true
accuracy far less often than 95% when n is small or p is near 0 or 1. Wilson's interval inverts the
score test instead: 0 out of 50 gives [0, 0.071].
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

Z_95 = 1.96


def binomial_stderr(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` independent items: sqrt(p (1 - p) / n).
    Zero at p = 0 or 1, so never build an interval from it there: use ``wilson_interval``."""
    return math.sqrt(p * (1 - p) / n) if n else math.nan


def wilson_interval(p: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval (95% for z = 1.96) of an accuracy ``p`` measured on ``n`` items.

    The accuracies p for which a z-test of the observed p would not reject:
    ``(p + z²/2n ± z sqrt(p (1 - p) / n + z²/4n²)) / (1 + z²/n)``. Unlike Wald's ``p ± z stderr`` it is never
    empty at p = 0 or 1 and stays inside [0, 1]. ``p`` may be a mean of fractional credits (ties)."""
    if n <= 0:
        return math.nan, math.nan
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # the interval always holds p; min / max only mend float rounding at p = 0 and 1
    return max(0.0, min(centre - half, p)), min(1.0, max(centre + half, p))


def accuracy_vs_chance(correct: Sequence[float], chance: Sequence[float]) -> dict[str, Any]:
    """Accuracy (mean of per-item credit in [0, 1]), its stderr and 95% Wilson interval (``ci95``), chance,
    z against chance and a verdict."""
    n = len(correct)
    if n == 0:
        return {"n": 0, "accuracy": math.nan, "stderr": math.nan, "ci95": [math.nan, math.nan], "chance": math.nan,
                "z_vs_chance": None, "verdict": "no items"}
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
    return {"n": n, "accuracy": acc, "stderr": binomial_stderr(acc, n), "ci95": list(wilson_interval(acc, n)),
            "chance": base, "z_vs_chance": z, "distinguishable_from_chance": distinct, "verdict": verdict}


def breakdown(records: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], str | None],
              credit: str = "correct") -> dict[str, dict[str, Any]]:
    """Accuracy per category (``key(record)``; None leaves a record out), each with its stderr, 95% Wilson
    interval and chance."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        k = key(r)
        if k is not None:
            groups[k].append(r)
    out = {}
    for k in sorted(groups, key=_natural):
        rs = groups[k]
        stats = accuracy_vs_chance([r[credit] for r in rs], [r.get("chance", 0.0) for r in rs])
        out[k] = {f: stats[f] for f in ("n", "accuracy", "stderr", "ci95", "chance", "verdict")}
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
