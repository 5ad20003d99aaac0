"""Multiple choice by log-likelihood: the model picks the choice it finds most probable after the question.

No generation, no answer letter to parse: each choice is scored as a continuation of the question.

* ``acc``: argmax of the *summed* log-likelihood. Every token costs probability, so this favours short
  choices (the error analysis reports how often the pick is the shortest choice).
* ``acc_norm``: argmax of the log-likelihood *per UTF-8 byte* of the choice's text, which removes that bias
  and, unlike per-token normalisation, does not depend on the tokenizer.

Ties (identical scores) give fractional credit, 1 / (choices tied at the top), so a model that cannot tell
the choices apart scores chance rather than the share of answers that happen to be "A".

Prompts: ARC and CommonsenseQA as ``"Question: {question}\\nAnswer:"`` + ``" {choice}"``; HellaSwag as the
context followed by the ending (no space before an ending that starts with punctuation).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmlab.data.corpus import iter_jsonl
from mmlab.data.registry import DataError
from mmlab.eval.stats import accuracy_vs_chance, breakdown

Scorer = Callable[[str, Sequence[str]], Sequence[float]]  # (context, continuations) -> summed log-likelihoods

# registry dataset -> prompt style
CHOICE_TASKS = {"arc-easy-test": "question", "commonsenseqa-val": "question", "hellaswag-100": "completion"}
LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class ChoiceItem:
    context: str  # the text the choices continue
    choices: tuple[str, ...]  # each continuation exactly as scored (with its leading space)
    gold: tuple[int, ...]  # indices of the correct choices
    source: str = ""  # file:line


def make_item(question: str, options: Sequence[str], gold: Sequence[int], style: str, source: str = "") -> ChoiceItem:
    if style == "question":
        return ChoiceItem(f"Question: {question.strip()}\nAnswer:", tuple(" " + o.strip() for o in options),
                          tuple(gold), source)
    context = question.rstrip()
    choices = tuple(o.strip() if o.strip()[:1] in ",.;:!?'" else " " + o.strip() for o in options)
    return ChoiceItem(context, choices, tuple(gold), source)


def load_choice_items(path: str | Path, style: str, limit: int | None = None) -> list[ChoiceItem]:
    """Items of a nutcracker-format JSONL file ({centerpiece, options, correct_options_idx}), the first ``limit``."""
    items = []
    for lineno, r in iter_jsonl(path, with_lines=True):
        q, options, gold = r.get("centerpiece"), r.get("options"), r.get("correct_options_idx")
        if not (isinstance(q, str) and isinstance(options, list) and len(options) >= 2
                and all(isinstance(o, str) and o.strip() for o in options) and isinstance(gold, list) and gold
                and all(isinstance(g, int) and 0 <= g < len(options) for g in gold)):
            raise DataError(f"{path}:{lineno}: expected a string 'centerpiece', a list of >= 2 non-empty 'options' "
                            "and 'correct_options_idx' indices into them")
        items.append(make_item(q, options, gold, style, f"{Path(path).name}:{lineno}"))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise DataError(f"{path}: no items")
    return items


def evaluate_choices(items: Sequence[ChoiceItem], score: Scorer, n_failures: int = 5,
                     progress: bool = False) -> dict[str, Any]:
    """Score every choice of every item with ``score``; accuracy (summed and per-byte), chance, error analysis.

    Items ``score`` cannot handle (it raises MMLabError: text the tokenizer cannot encode, a choice too long
    for the context) are skipped and counted by reason."""
    from tqdm import tqdm

    from mmlab.errors import MMLabError

    records, skipped = [], {}
    for item in tqdm(items, disable=not progress, desc="multiple choice", unit="item"):
        try:
            sums = [float(s) for s in score(item.context, item.choices)]
        except MMLabError as e:
            reason = type(e).__name__
            skipped.setdefault(reason, {"count": 0, "first": f"{item.source}: {e}"})["count"] += 1
            continue
        per_byte = [s / len(c.encode("utf-8")) for s, c in zip(sums, item.choices, strict=True)]
        lengths = [len(c.encode("utf-8")) for c in item.choices]
        rec = {"item": item, "sums": sums, "per_byte": per_byte, "chance": len(item.gold) / len(item.choices),
               "n_choices": len(item.choices),
               # a tie counts, as it does for the picks below: "the shortest" means "has the fewest bytes"
               "gold_is_shortest": any(lengths[g] == min(lengths) for g in item.gold)}
        for name, scores in (("acc", sums), ("acc_norm", per_byte)):
            top = max(scores)
            tied = [i for i, s in enumerate(scores) if s == top]
            rec[name] = sum(i in item.gold for i in tied) / len(tied)
            rec[f"{name}_pick"] = tied[0]
            rec[f"{name}_picks_shortest"] = lengths[tied[0]] == min(lengths)
        records.append(rec)
    chance = [r["chance"] for r in records]
    result: dict[str, Any] = {
        "n": len(records),
        "skipped": skipped,
        "chance": sum(chance) / len(chance) if chance else None,
        "metrics": {name: accuracy_vs_chance([r[name] for r in records], chance) for name in ("acc", "acc_norm")},
        "metric_help": {"acc": "argmax of the summed log-likelihood of each choice",
                        "acc_norm": "argmax of the log-likelihood per UTF-8 byte of each choice"},
    }
    result["breakdown"] = {
        f"{name}_by_{what}": breakdown(records, key, credit=name)
        for name in ("acc", "acc_norm")
        for what, key in (("n_choices", lambda r: str(r["n_choices"])),
                          ("gold_position", lambda r: LETTERS[r["item"].gold[0]]))
    }
    if records:
        n = len(records)
        result["bias"] = {
            "gold_is_shortest": sum(r["gold_is_shortest"] for r in records) / n,
            **{f"{name}_picks_shortest": sum(r[f"{name}_picks_shortest"] for r in records) / n
               for name in ("acc", "acc_norm")},
            **{f"{name}_pick_position": {LETTERS[k]: sum(r[f"{name}_pick"] == k for r in records) / n
                                         for k in range(max(r["n_choices"] for r in records))}
               for name in ("acc", "acc_norm")},
        }
    result["failures"] = [_sample(r) for r in records if r["acc_norm"] < 1][:n_failures]
    return result


def _sample(r: dict[str, Any]) -> dict[str, Any]:
    item: ChoiceItem = r["item"]
    return {"source": item.source, "context": item.context, "choices": list(item.choices),
            "gold": [LETTERS[g] for g in item.gold], "picked": LETTERS[r["acc_norm_pick"]],
            "picked_by_sum": LETTERS[r["acc_pick"]], "loglik_per_byte": [round(x, 4) for x in r["per_byte"]]}
