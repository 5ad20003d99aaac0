"""The starting checkpoints of the post-training lessons (SFT, LoRA, DPO, GRPO, distillation).

Post-training starts from a trained model, and training one for every experiment would cost more than
the experiment. So the lessons share two checkpoints, each built once by the library's own stages and
kept in a cache (``$MMLAB_LAB_CACHE``, default ``~/.cache/mmlab/lab``) under a name that hashes every
setting, so a changed setting builds a new one:

- ``lesson_base``: a 4 x 128 (GQA) model with a 1,024-token BPE, pretrained on TinyStories;
- ``lesson_sft``: that base after SFT on the synthetic verifiable tasks.

Every experiment records the checkpoints' settings in its results. ``--smoke`` builds tiny ones in the
experiment's output folder instead (seconds, never cached).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mmlab.config import ModelConfig

DONE = "lab_checkpoint.json"  # written last: a folder without it is an interrupted build
# part of every cached checkpoint's name: raise it when a library change alters what a build produces
SFT_VERSION = 2  # 2: SFT packs every batch afresh


def cache_root() -> Path:
    return Path(os.environ.get("MMLAB_LAB_CACHE") or Path.home() / ".cache" / "mmlab" / "lab")


def base_model(smoke: bool = False) -> ModelConfig:
    if smoke:
        return ModelConfig(name="lesson-base-smoke", vocab_size=300, hidden_size=32, n_layers=1, n_heads=2,
                           n_kv_heads=1, max_seq_len=64, rope_theta=1e4)
    return ModelConfig(name="lesson-base", vocab_size=1024, hidden_size=128, n_layers=4, n_heads=4, n_kv_heads=2,
                       max_seq_len=128, rope_theta=1e4)


def base_settings(exp: Any) -> dict[str, Any]:
    """How ``lesson_base`` is trained (for ``exp``'s mode and seed)."""
    smoke = exp.mode == "smoke"
    return {"model": asdict(base_model(smoke)), "corpus": "tinystories-train-2mib", "tokenizer": "bpe",
            "train": {"max_iters": 4 if smoke else 800, "batch_size": 4 if smoke else 16,
                      "block_size": 64 if smoke else 128, "lr": 3e-3, "warmup_iters": 1 if smoke else 40,
                      "schedule": "wsd", "eval_interval": 4 if smoke else 200, "eval_batches": 2 if smoke else 10,
                      "seed": exp.seed, "device": "cpu"}}


def sft_settings(exp: Any, steps: int | None = None) -> dict[str, Any]:
    """How ``lesson_sft`` is trained: full SFT of ``lesson_base`` on the synthetic tasks."""
    smoke = exp.mode == "smoke"
    return {"version": SFT_VERSION, "base": base_settings(exp), "data": "synthetic-tasks",
            "n_synthetic": 200 if smoke else 20_000,
            "train": {"max_iters": 4 if smoke else (steps or 800), "batch_size": 4 if smoke else 16,
                      "block_size": 64 if smoke else 128, "lr": 1e-3, "warmup_iters": 1 if smoke else 40,
                      "eval_interval": 4 if smoke else 200, "eval_batches": 2 if smoke else 10,
                      "weight_decay": 0.0, "seed": exp.seed, "device": "cpu"}}


def _folder(exp: Any, kind: str, settings: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    root = exp.out_dir / "_checkpoints" if exp.mode == "smoke" else cache_root()
    return root / f"{kind}-{key}"


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` (a lock file) while the block runs: two experiments that need the same
    checkpoint at once build it once; the second waits and then finds it done. No lock where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(exp: Any, kind: str, settings: dict[str, Any], train) -> Path:
    folder = _folder(exp, kind, settings)
    if (folder / DONE).is_file():
        return folder
    with _locked(folder.with_name(folder.name + ".lock")):
        if (folder / DONE).is_file():  # built by another process while this one waited
            return folder
        exp.log(f"building the shared {kind} checkpoint (once; cached in {folder})")
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        train(tmp)
        (tmp / DONE).write_text(json.dumps(settings, indent=2) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return folder


def lesson_base(exp: Any) -> Path:
    """The pretrained base (a run folder ``load_model`` reads)."""
    from mmlab.train.config import TrainConfig
    from mmlab.train.pretrain import pretrain

    s = base_settings(exp)
    return _build(exp, "base", s, lambda out: pretrain(
        ModelConfig(**s["model"]), s["corpus"], TrainConfig(out_dir=str(out), progress=False, **s["train"]),
        tokenizer=s["tokenizer"]))


def lesson_sft(exp: Any, steps: int | None = None) -> Path:
    """``lesson_base`` after ``steps`` of full SFT on the synthetic tasks (default: the settings' steps)."""
    from mmlab.train.config import TrainConfig
    from mmlab.train.sft import sft

    s = sft_settings(exp, steps)
    base = lesson_base(exp)
    return _build(exp, "sft", s, lambda out: sft(
        base, s["data"], TrainConfig(out_dir=str(out), progress=False, **s["train"]), evaluate=False,
        n_synthetic=s["n_synthetic"]))


def stage_config(exp: Any, out: str | Path, steps: int, lr: float, **overrides: Any):
    """The ``TrainConfig`` of one post-training run in a lesson: 16 rows of up to 128 tokens per step (8 of
    64 in ``--smoke``), on the CPU, with ``exp``'s seed; ``overrides`` set any other field."""
    from mmlab.train.config import TrainConfig

    smoke = exp.mode == "smoke"
    settings = {"max_iters": steps, "lr": lr, "batch_size": 4 if smoke else 16, "block_size": 64 if smoke else 128,
                "warmup_iters": max(1, steps // 20), "eval_interval": max(1, steps // 5),
                "eval_batches": 2 if smoke else 10, "weight_decay": 0.0, "seed": exp.seed, "device": "cpu",
                "log_interval": max(1, steps // 10), "progress": False}
    return TrainConfig(out_dir=str(out), **(settings | overrides))


def curve(out: str | Path, key: str = "val_loss") -> list[tuple[int, float]]:
    """(step, value) pairs of ``key`` from a run folder's ``metrics.jsonl``."""
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r[key]) for r in rows if key in r]


def heldout_tasks(exp: Any, n: int | None = None) -> list:
    """Task items for measuring accuracy, drawn with another seed than any training data of the lessons
    (``mul`` and ``fact`` prompts come from small finite sets, so some repeat training prompts)."""
    from mmlab.data.synthetic import make_tasks

    return make_tasks(n or exp.pick(300, 60, 12), seed=10_000 + exp.seed)


def task_accuracy(model: Any, tok: Any, items: list, max_new_tokens: int = 12,
                  enable_thinking: bool | None = None) -> dict[str, float]:
    """Greedy exact match per task and overall (``"all"``) on task items, in the chat template.
    ``enable_thinking=False`` ends the prompt with an empty think block (thinking off); the answer scored is
    what follows a think block, if the model wrote one (``parse_reply``)."""
    import torch

    from mmlab.infer.generate import generate
    from mmlab.tokenizer.chat import IM_END, encode_chat, parse_reply

    model.eval()
    stop = tok.token_to_id(IM_END)
    hits: dict[str, list[bool]] = {}
    with torch.no_grad():
        for item in items:
            ids, _ = encode_chat(tok, [{"role": "user", "content": item.prompt}], add_generation_prompt=True,
                                 enable_thinking=enable_thinking)
            out = generate(model, ids, max_new_tokens, temperature=0.0, stop_tokens=[stop])[0]
            answer = parse_reply(tok.decode([t for t in out if t != stop]), tools=False).content
            hits.setdefault(item.task, []).append(item.is_correct(answer))
    acc = {task: sum(h) / len(h) for task, h in hits.items()}
    every = [x for h in hits.values() for x in h]
    return acc | {"all": sum(every) / len(every)}


def reasoning_accuracy(model: Any, tok: Any, problems: list, think: bool = True, budgets: list | None = None,
                       max_new_tokens: int = 100, force_open: bool = False) -> dict[Any, dict[str, Any]]:
    """Greedy exact match of reasoning problems (``mmlab.data.reasoning``) with thinking on or off, for each
    thinking budget (None: unlimited; see ``mmlab.infer.thinking``). Per budget: accuracy and mean thinking
    tokens per step count (``problem.task``) and overall (``"all"``), the share of replies that thought (a
    non-empty think block), the share whose think block the model closed itself, and a few samples.
    ``force_open``: the think block is opened for the model (see ``mmlab.infer.thinking.budget_replies``)."""
    import statistics

    from mmlab.infer.thinking import budget_replies

    convs = [[{"role": "user", "content": p.prompt}] for p in problems]
    out = {}
    for budget, rows in budget_replies(model, tok, convs, budgets or [None], think, max_new_tokens,
                                       force_open=force_open).items():
        acc: dict[str, list[float]] = {}
        spent: dict[str, list[float]] = {}
        for p, r in zip(problems, rows, strict=True):
            for key in (p.task, "all"):
                acc.setdefault(key, []).append(float(r.answer == p.answer))
                spent.setdefault(key, []).append(float(r.think_tokens))
        out[budget] = {"accuracy": {k: statistics.fmean(v) for k, v in acc.items()},
                       "think_tokens": {k: statistics.fmean(v) for k, v in spent.items()},
                       "thought": statistics.fmean(float(bool((r.reasoning or "").strip())) for r in rows),
                       "closed": statistics.fmean(float(r.closed) for r in rows),
                       "n": len(rows),
                       "samples": [{"prompt": p.prompt, "answer": p.answer, "reply": r.text}
                                   for p, r in list(zip(problems, rows, strict=True))[:3]]}
    return out
