"""Exact-match tasks: the model answers in free text (greedy), and the answer is checked, not judged.

* ``synthetic-tasks``: the built-in verifiable tasks (arithmetic, copy, reverse, facts); correct when the
  answer, trimmed, equals the reference.
* ``gsm8k-test``: grade-school maths; the number the completion commits to (after ``####``, else its last
  number: ``mmlab.data.verifiable.extract_answer``) must equal the reference number.

A tokenizer with the chat tokens gets the question as a user turn of the ChatML template (what SFT taught
the model) and the answer ends at ``<|im_end|>``; otherwise the prompt is ``"Question: {q}\\nAnswer:"``
and the answer ends at the end of its line (synthetic) or where a new "Question:" starts (GSM8K).
The error analysis splits accuracy by task kind, by the reference answer's length, and (GSM8K) by the
number of steps of the reference solution; it counts completions with no answer at all (a format failure,
not a wrong answer) and keeps a few failures to read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmlab.data.synthetic import TASKS, make_tasks
from mmlab.data.verifiable import extract_answer, load_gsm8k, normalise_number
from mmlab.eval.stats import accuracy_vs_chance, breakdown, length_bucket
from mmlab.model.lm import MiniMindLM
from mmlab.tokenizer.base import ENDOFTEXT, IM_END, IM_START, Tokenizer

Answerer = Callable[[str], "str | None"]  # question -> completion (None: the prompt does not fit the context)
EXACT_TASKS = ("synthetic-tasks", "gsm8k-test")
SYNTHETIC_SEED = 99_991  # the held-out seed the speedrun evaluates on
SYNTHETIC_DEFAULT_N = 300


@dataclass(frozen=True)
class QAItem:
    question: str
    answer: str  # the reference (a number, normalised, for GSM8K)
    kind: str  # "add", ..., "fact" for the synthetic tasks; "math" for GSM8K
    source: str = ""
    steps: int | None = None  # lines of the reference solution (GSM8K)


def synthetic_items(n: int = SYNTHETIC_DEFAULT_N, seed: int = SYNTHETIC_SEED) -> list[QAItem]:
    return [QAItem(t.prompt, t.answer, t.task, f"synthetic seed {seed} item {i}")
            for i, t in enumerate(make_tasks(n, TASKS, seed=seed))]


def gsm8k_items(path: str | Path, limit: int | None = None) -> list[QAItem]:
    items = load_gsm8k(path)[:limit]
    return [QAItem(m.question, m.answer, "math", f"{Path(path).name}:{i + 1}", m.solution.count("\n") + 1)
            for i, m in enumerate(items)]


def grade(item: QAItem, completion: str) -> tuple[bool, str | None]:
    """(correct, the answer read from the completion; None when it holds none)."""
    if item.kind == "math":
        got = extract_answer(completion)
        return got is not None and got == normalise_number(item.answer), got
    got = completion.strip()
    return got == item.answer, got or None


class ModelAnswerer:
    """Greedy answers of ``model``, through the chat template when the tokenizer has its tokens."""

    def __init__(self, model: MiniMindLM, tok: Tokenizer, max_new_tokens: int, single_line: bool):
        self.model, self.tok, self.max_new_tokens, self.single_line = model, tok, max_new_tokens, single_line
        self.chat = tok.token_to_id(IM_START) is not None and tok.token_to_id(IM_END) is not None
        self.eot = tok.token_to_id(ENDOFTEXT)
        self.stops = [t for t in (tok.token_to_id(IM_END) if self.chat else None, self.eot) if t is not None]
        self.prompt_format = "chat template" if self.chat else "Question: {question}\\nAnswer:"

    def prompt_ids(self, question: str) -> list[int]:
        from mmlab.tokenizer.chat import encode_chat

        if self.chat:
            return encode_chat(self.tok, [{"role": "user", "content": question}], add_generation_prompt=True)[0]
        prefix = [self.eot] if self.eot is not None else []
        return prefix + self.tok.encode(f"Question: {question}\nAnswer:", allow_special=False)

    def __call__(self, question: str) -> str | None:
        from mmlab.infer.generate import generate

        ids = self.prompt_ids(question)
        room = min(self.max_new_tokens, self.model.cfg.max_seq_len - len(ids))
        if room <= 0:
            return None
        text = self.tok.decode(generate(self.model, ids, room, temperature=0.0, stop_tokens=self.stops)[0])
        if not self.chat:  # a base model runs on: keep its answer, not the next question it invents
            text = text.split("\n")[0] if self.single_line else text.split("\nQuestion:")[0]
        return text


def shuffled_chance(refs: Sequence[str], gots: Sequence[str | None]) -> list[float]:
    """Per item i: the share of the *other* items whose answer (``gots``) equals item i's reference. Its mean
    is what the model would score answering every question with its own answer to another question — its
    answers shuffled, so the question is never read. An open answer's chance is often taken as 0; on a task
    with few distinct answers (a small set of facts, small numbers) it is not."""
    counts = Counter(g for g in gots if g is not None)
    n = len(refs)
    return [(counts[r] - (g == r)) / (n - 1) if n > 1 else 0.0 for r, g in zip(refs, gots, strict=True)]


def evaluate_exact(items: Sequence[QAItem], answer: Answerer, n_failures: int = 5,
                   progress: bool = False) -> dict[str, Any]:
    """Answer every item with ``answer`` and grade it; accuracy next to the shuffled-answer chance (the
    model's own answers given to the other questions of the same kind: ``shuffled_chance``), error analysis.

    Items ``answer`` cannot take (None: the prompt fills the context; MMLabError: text the tokenizer cannot
    encode) are skipped and counted by reason."""
    from tqdm import tqdm

    from mmlab.errors import MMLabError

    records, skipped = [], {}
    for item in tqdm(items, disable=not progress, desc="exact match", unit="item"):
        try:
            completion = answer(item.question)
            reason, why = "prompt_too_long", "the prompt fills the model's context"
        except MMLabError as e:  # e.g. a character the tokenizer does not know
            completion, reason, why = None, type(e).__name__, str(e)
        if completion is None:
            skipped.setdefault(reason, {"count": 0, "first": f"{item.source}: {why}"})["count"] += 1
            continue
        ok, got = grade(item, completion)
        records.append({"item": item, "completion": completion, "extracted": got, "correct": float(ok)})
    for kind in {r["item"].kind for r in records}:
        same = [r for r in records if r["item"].kind == kind]
        refs = [normalise_number(r["item"].answer) if kind == "math" else r["item"].answer for r in same]
        for r, c in zip(same, shuffled_chance(refs, [r["extracted"] for r in same]), strict=True):
            r["chance"] = c
    chance = [r["chance"] for r in records]
    stats = accuracy_vs_chance([r["correct"] for r in records], chance)
    result: dict[str, Any] = {
        "n": len(records),
        "skipped": skipped,
        "chance": sum(chance) / len(chance) if chance else 0.0,
        "chance_note": "shuffled answers: the model's own answers given to the other questions of the same kind "
                       "(what answering without reading the question scores)",
        "metrics": {"exact_match": stats},
        "no_answer": sum(r["extracted"] is None for r in records) / len(records) if records else None,
        "breakdown": {
            "by_kind": breakdown(records, lambda r: r["item"].kind),
            "by_answer_length": breakdown(records, lambda r: length_bucket(len(r["item"].answer))),
        },
        "failures": [{"source": r["item"].source, "question": r["item"].question, "reference": r["item"].answer,
                      "completion": r["completion"], "extracted": r["extracted"]}
                     for r in records if not r["correct"]][:n_failures],
    }
    if any(r["item"].steps is not None for r in records):
        result["breakdown"]["by_solution_steps"] = breakdown(
            records, lambda r: None if r["item"].steps is None else length_bucket(r["item"].steps))
    return result
