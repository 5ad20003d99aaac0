"""Cleaning a pretraining corpus: exact and near-exact deduplication, length and character filters,
and the before/after statistics that show what each step removed.

Near-exact duplicates are found by a normalised key (lower case, whitespace collapsed, punctuation
dropped): the cheap first pass real pipelines run before fuzzy (MinHash) deduplication.
"""

from __future__ import annotations

import hashlib
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

_WS = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]")


def dedup_key(text: str, normalise: bool = True) -> str:
    if normalise:
        text = _WS.sub(" ", _PUNCT.sub("", text.casefold())).strip()
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def deduplicate(docs: Sequence[str], normalise: bool = True) -> tuple[list[str], int]:
    """Keep the first copy of every document; return the kept documents and how many were removed."""
    seen: set[str] = set()
    kept = []
    for d in docs:
        k = dedup_key(d, normalise)
        if k not in seen:
            seen.add(k)
            kept.append(d)
    return kept, len(docs) - len(kept)


def non_ascii_share(text: str) -> float:
    return sum(ord(c) > 127 for c in text) / max(len(text), 1)


@dataclass
class CleaningReport:
    rows: list[dict] = field(default_factory=list)

    def add(self, step: str, docs: Sequence[str], removed: int) -> None:
        lengths = [len(d) for d in docs] or [0]
        self.rows.append({"step": step, "documents": len(docs), "removed": removed,
                          "characters": sum(lengths), "median_chars": statistics.median(lengths)})


def clean(docs: Sequence[str], min_chars: int = 200, max_chars: int = 5000,
          max_non_ascii: float = 0.01) -> tuple[list[str], CleaningReport]:
    """Exact dedup, near-exact dedup, then length and character filters, in that order."""
    if min_chars < 0 or max_chars < min_chars:
        raise ValueError(f"min_chars={min_chars}, max_chars={max_chars}: need 0 <= min_chars <= max_chars")
    if not 0 <= max_non_ascii <= 1:
        raise ValueError(f"max_non_ascii={max_non_ascii} must be a share in [0, 1]")
    report = CleaningReport()
    report.add("raw", docs, 0)
    docs, n = deduplicate(docs, normalise=False)
    report.add("exact dedup", docs, n)
    docs, n = deduplicate(docs, normalise=True)
    report.add("near-exact dedup (case, spaces, punctuation)", docs, n)
    for name, keep in ((f"length {min_chars}-{max_chars} chars", lambda d: min_chars <= len(d) <= max_chars),
                       (f"non-ASCII share <= {max_non_ascii:g}", lambda d: non_ascii_share(d) <= max_non_ascii)):
        before = len(docs)
        docs = [d for d in docs if keep(d)]
        report.add(name, docs, before - len(docs))
    return docs, report
