"""Shared by the evaluation lesson's experiments: the models under test and per-item multiple-choice scores.

Three models with one architecture and one tokenizer (4 layers x 128 with GQA, a 1,024-token BPE):

- ``random``: the architecture freshly initialised (seeded): a control that has learned nothing;
- ``base``: the post-training lessons' pretrained model (``mmlab.lab.posttrain.lesson_base``: TinyStories);
- ``sft``: that base after SFT on the synthetic verifiable tasks (``lesson_sft``).

Both checkpoints are built once by the library's own stages and cached (``$MMLAB_LAB_CACHE``); ``--smoke``
builds tiny ones in its output folder. Multiple-choice items are scored by the library's ``LogLikelihood``
(the scorer ``mmlab eval`` uses); we keep each choice's summed log-probability, its token count and its UTF-8
bytes, so one scoring pass gives every normalisation, and ``evaluate_choices`` re-reads the same numbers for
the library's own report.
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch

from mmlab.data.registry import dataset_path
from mmlab.errors import MMLabError
from mmlab.eval.choice import CHOICE_TASKS, ChoiceItem, evaluate_choices, load_choice_items
from mmlab.eval.loglik import LogLikelihood
from mmlab.eval.tasks import TASKS, format_report
from mmlab.lab.posttrain import base_settings, lesson_base, lesson_sft, sft_settings
from mmlab.model.lm import MiniMindLM
from mmlab.tokenizer.base import Tokenizer
from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model

MODELS = ("random", "base", "sft")
RULES = ("sum", "per token", "per byte")  # how the choices' log-likelihoods are compared
# what each task's context is replaced with when the question is removed (the "choices alone" control)
NO_QUESTION = {"question": "Answer:", "completion": ""}


def lesson_models(exp: Any, which: tuple[str, ...] = MODELS) -> tuple[dict[str, MiniMindLM], Tokenizer]:
    """The models named in ``which`` (see the module docstring), in eval mode, and their shared tokenizer."""
    base = lesson_base(exp)
    tok = load_checkpoint_tokenizer(base)
    out: dict[str, MiniMindLM] = {}
    for name in which:
        if name == "random":
            cfg = load_model(base).cfg
            torch.manual_seed(exp.seed)
            out[name] = MiniMindLM(cfg).eval()
        elif name == "base":
            out[name] = load_model(base).eval()
        else:
            out[name] = load_model(lesson_sft(exp)).eval()
    return out, tok


def model_settings(exp: Any) -> dict[str, Any]:
    return {"random": f"the base architecture, freshly initialised with seed {exp.seed}",
            "base": base_settings(exp), "sft": sft_settings(exp)}


def task_items(task: str, limit: int | None) -> list[ChoiceItem]:
    """The first ``limit`` items of a registry multiple-choice task (``arc-easy-test``, ...)."""
    return load_choice_items(dataset_path(task), CHOICE_TASKS[task], limit)


def credit(scores: list[float], gold: tuple[int, ...]) -> float:
    """1 if the top score is a gold choice; ties share: 1 / (choices tied at the top) per gold one among them."""
    top = max(scores)
    tied = [i for i, s in enumerate(scores) if s == top]
    return sum(i in gold for i in tied) / len(tied)


def score_items(model: MiniMindLM, tok: Tokenizer, items: list[ChoiceItem], context: str | None = None
                ) -> list[dict[str, Any]]:
    """Per item: each choice's summed log-probability, tokens and bytes, and the credit under each rule.
    ``context``: score the choices after this text instead of the item's own (the question removed).
    Items the scorer cannot take (too long for the context) are left out."""
    ll = LogLikelihood(model, tok)
    records = []
    for item in items:
        ctx = item.context if context is None else context
        try:
            sums = ll(ctx, item.choices)
        except MMLabError:
            continue
        n_tokens = [ll.encode(ctx, c)[1] for c in item.choices]
        n_bytes = [len(c.encode("utf-8")) for c in item.choices]
        scores = {"sum": sums, "per token": [s / n for s, n in zip(sums, n_tokens, strict=True)],
                  "per byte": [s / n for s, n in zip(sums, n_bytes, strict=True)]}
        records.append({"item": item, "sums": sums, "tokens": n_tokens, "bytes": n_bytes,
                        "chance": len(item.gold) / len(item.choices),
                        **{rule: credit(scores[rule], item.gold) for rule in RULES},
                        "picks": {rule: scores[rule].index(max(scores[rule])) for rule in RULES}})
    return records


def library_report(records: list[dict[str, Any]]) -> dict[str, Any]:
    """``evaluate_choices`` (what ``mmlab eval`` reports) over the same scores, without scoring again."""
    sums = {(r["item"].context, r["item"].choices): r["sums"] for r in records}
    return evaluate_choices([r["item"] for r in records], lambda ctx, conts: sums[(ctx, tuple(conts))])


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def rounded(x: Any) -> Any:
    """``x`` with every float rounded to 4 significant digits (for showing JSON to a reader)."""
    if isinstance(x, float):
        return float(f"{x:.4g}")
    if isinstance(x, dict):
        return {k: rounded(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [rounded(v) for v in x]
    return x


def cli_samples(task: str, args: str, report: dict[str, Any], keep: dict[str, Any]) -> list[dict[str, str]]:
    """What ``mmlab eval ... --task TASK`` prints for ``report`` (``format_report``), and ``keep``: an excerpt of
    the JSON it writes with ``--out`` (floats rounded), as text samples for the docs."""
    command = f"mmlab eval --ckpt CKPT --task {task}{' ' + args if args else ''}"
    return [{"title": f"$ {command}", "text": format_report({"task": task, "about": TASKS[task], **report})},
            {"title": f"$ {command} --out result.json   (part of result.json, floats rounded)",
             "text": compact_json(rounded(keep))}]


def compact_json(x: Any) -> str:
    """Indented JSON with lists of plain values on one line."""
    text = json.dumps(x, indent=2, ensure_ascii=False, default=str)
    return re.sub(r"\[\n\s*([^\[\]{}]*?)\n\s*\]", lambda m: "[" + re.sub(r",\n\s*", ", ", m[1]) + "]", text)
