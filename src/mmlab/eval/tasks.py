"""`mmlab eval`: one entry point for every task, a JSON result, and a readable summary.

    >>> result = run_eval("runs/sft", "synthetic-tasks", limit=60)
    >>> result["metrics"]["exact_match"]["accuracy"], result["metrics"]["exact_match"]["verdict"]
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from mmlab.data.synthetic import SYNTHETIC_CORPORA
from mmlab.errors import MMLabError
from mmlab.eval.choice import CHOICE_TASKS, evaluate_choices, load_choice_items
from mmlab.eval.exact import (
    SYNTHETIC_DEFAULT_N,
    SYNTHETIC_SEED,
    ModelAnswerer,
    evaluate_exact,
    gsm8k_items,
    synthetic_items,
)
from mmlab.eval.loglik import LogLikelihood

TASKS = {
    "perplexity": "loss, perplexity and bits per byte on a text corpus (--data)",
    "arc-easy-test": "ARC-Easy science questions, 3-5 choices, scored by log-likelihood",
    "commonsenseqa-val": "CommonsenseQA, 5 choices, scored by log-likelihood",
    "hellaswag-100": "100 HellaSwag sentence endings, 4 choices, scored by log-likelihood",
    "synthetic-tasks": "the built-in verifiable tasks (arithmetic, copy, reverse, facts), exact match",
    "gsm8k-test": "grade-school maths, the final number must match (exact match)",
}


def check_task(task: str) -> None:
    if task not in TASKS:
        raise MMLabError(f"unknown eval task {task!r}; known: {', '.join(TASKS)}")


def run_eval(ckpt: str | Path, task: str, limit: int | None = None, data: str | None = None, split: str = "all",
             out: str | Path | None = None, device: str = "auto", seed: int = SYNTHETIC_SEED,
             max_new_tokens: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Evaluate the checkpoint ``ckpt`` on ``task`` (see TASKS); write the result to ``out`` (JSON) if given."""
    from mmlab.data.registry import dataset_path
    from mmlab.device import resolve_device
    from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model, pretraining_corpus, resolve_checkpoint

    check_task(task)
    if limit is not None and limit < 1:
        raise MMLabError(f"--limit {limit} must be a positive number of items")
    folder = resolve_checkpoint(ckpt)
    dev = resolve_device(device)
    model, tok = load_model(folder, device=dev).eval(), load_checkpoint_tokenizer(folder)
    t0 = time.perf_counter()
    settings: dict[str, Any] = {}
    if task == "perplexity":
        from mmlab.eval.perplexity import perplexity

        run, why = pretraining_corpus(folder)
        if run is not None and data not in (None, run["data"]):
            run = None  # another corpus: its own split, seed 0
        data = data or (run or {}).get("data")
        if data is None:
            raise MMLabError(f"--task perplexity needs --data: a corpus name (`mmlab data list`) or a text file "
                             f"({why})")
        val_fraction, corpus_seed = (run or {}).get("val_fraction", 0.1), (run or {}).get("seed", 0)
        result = perplexity(model, tok, data, split=split, limit=limit, val_fraction=val_fraction,
                            corpus_seed=corpus_seed)
        settings = {"data": data, "split": split, "val_fraction": val_fraction if split == "val" else None,
                    "corpus_seed": corpus_seed if data in SYNTHETIC_CORPORA else None, "limit_tokens": limit,
                    "window": model.cfg.max_seq_len}
    elif task in CHOICE_TASKS:
        items = load_choice_items(dataset_path(task), CHOICE_TASKS[task], limit)
        result = evaluate_choices(items, LogLikelihood(model, tok), progress=progress)
        settings = {"style": CHOICE_TASKS[task], "items_read": len(items)}
    else:
        if task == "synthetic-tasks":
            items = synthetic_items(limit or SYNTHETIC_DEFAULT_N, seed)
            answerer = ModelAnswerer(model, tok, max_new_tokens or 16, single_line=True)
            settings = {"seed": seed, "note": "mul (operands <= 12) and fact (14 names) draw from small sets: their "
                                              "prompts also occur in SFT data on synthetic-tasks, so they measure "
                                              "recall more than generalisation"}
        else:
            items = gsm8k_items(dataset_path(task), limit)
            answerer = ModelAnswerer(model, tok, max_new_tokens or 256, single_line=False)
        settings |= {"prompt_format": answerer.prompt_format, "max_new_tokens": answerer.max_new_tokens,
                     "decoding": "greedy", "items_read": len(items)}
        result = evaluate_exact(items, answerer, progress=progress)
    if not result["n"]:
        raise MMLabError(f"{task}: no item could be scored ({_skips(result)}); the model's context is "
                         f"{model.cfg.max_seq_len} tokens")
    report = {"task": task, "about": TASKS[task], "checkpoint": str(folder), **result, "settings": settings,
              "device": str(dev), "seconds": round(time.perf_counter() - t0, 2)}
    if out is not None:
        write_json(out, report)
    return report


def _skips(result: dict[str, Any]) -> str:
    skipped = result.get("skipped") or {}
    parts = [f"{k}: {v['count'] if isinstance(v, dict) else v}" + (f", e.g. {v['first']}" if isinstance(v, dict)
                                                                   else "") for k, v in skipped.items()]
    return "; ".join(parts) or "none skipped"


def write_json(path: str | Path, report: dict[str, Any]) -> Path:
    """Write atomically (a temp file renamed), so a crash never leaves half a result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(report, indent=2, default=_jsonable) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _jsonable(x: Any) -> Any:
    return str(x)


def format_report(r: dict[str, Any]) -> str:
    """A few lines for the terminal: the metrics next to chance, the breakdown, a failure or two."""
    lines = [f"{r['task']}: {r['n']:,} {'tokens' if r['task'] == 'perplexity' else 'items'} ({r['about']})"]
    if r.get("skipped"):
        lines.append(f"  skipped: {_skips(r)}")
    if r["task"] == "perplexity":
        m, ch = r["metrics"], r["chance"]
        lines.append(f"  loss {m['loss']:.4f} nats/token, perplexity {m['perplexity']:.2f} (uniform guess: "
                     f"{ch['perplexity']:.0f}), bits per byte {m['bits_per_byte']:.4f} (uniform guess: "
                     f"{ch['bits_per_byte']:.3f}) over {m['bytes']:,} bytes")
        return "\n".join(lines)
    for name, m in r["metrics"].items():
        z = "" if m["z_vs_chance"] is None else f", z = {m['z_vs_chance']:+.2f}"
        lo, hi = m["ci95"]
        lines.append(f"  {name:<12} {m['accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f})   chance {m['chance']:.3f}{z}: "
                     f"{m['verdict'].upper() if not m['distinguishable_from_chance'] else m['verdict']}")
    if "bias" in r:
        b = r["bias"]
        lines.append(f"  the pick is the shortest choice {b['acc_picks_shortest']:.0%} of the time (summed), "
                     f"{b['acc_norm_picks_shortest']:.0%} (per byte); the answer is the shortest "
                     f"{b['gold_is_shortest']:.0%} of the time")
    if r.get("no_answer") is not None:
        lines.append(f"  completions with no answer at all: {r['no_answer']:.0%}")
    for key, groups in r["breakdown"].items():
        if len(groups) > 1:
            cells = ", ".join(f"{k}: {g['accuracy']:.2f} (n={g['n']})" for k, g in groups.items()
                              if not math.isnan(g["accuracy"]))
            lines.append(f"  {key}: {cells}")
    for f in r["failures"][:2]:
        shown = {k: (v[:120] + "..." if isinstance(v, str) and len(v) > 120 else v) for k, v in f.items()}
        lines.append(f"  failure: {json.dumps(shown, ensure_ascii=False)}")
    return "\n".join(lines)
