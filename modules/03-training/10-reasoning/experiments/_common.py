"""Shared by the reasoning lesson's experiments: the lessons' pretrained base after SFT on multi-step arithmetic
in one of three styles — answers only, step-by-step traces, or both (hybrid) — and the held-out problems.

The three models see the same problems, from the same base, for the same steps of 16 packed rows of 128
tokens; only the assistant turns differ (``mmlab.data.reasoning``):

- ``answers``: every problem in the no-think variant (an empty think block, then the answer);
- ``traces``: every problem with its trace as ``reasoning_content`` (a think block), then the answer;
- ``hybrid``: each problem in one of the two at random, half and half (Qwen3's way to get one model with a
  thinking switch).

Each is built once and cached (``mmlab.lab.posttrain``), under a name that hashes its settings.
"""

from pathlib import Path
from typing import Any

from mmlab.data.reasoning import ReasoningProblem, heldout_problems, make_problems, write_jsonl
from mmlab.lab.posttrain import _build, base_settings, lesson_base

STYLES = {"answers": 1.0, "traces": 0.0, "hybrid": 0.5}  # style -> share of problems in the no-think variant
TRAIN_STEPS = (1, 2, 3, 4)  # step counts of the SFT problems
HELDOUT_STEPS = (2, 3, 4, 5)  # 5: longer than any training problem (1-step prompts are all in the training set)
MAX_NEW = 100  # tokens per reply: a 5-step trace is ~75 tokens with the lessons' BPE (digits are single tokens)
VERSION = 1  # part of the cached checkpoints' names: raise it when what a build produces changes


def sft_settings(exp: Any, style: str) -> dict[str, Any]:
    smoke = exp.mode == "smoke"
    return {"version": VERSION, "base": base_settings(exp), "style": style, "no_think_share": STYLES[style],
            "n_problems": 200 if smoke else 20_000, "steps": list(TRAIN_STEPS), "max_start": 20, "max_operand": 9,
            "problems_seed": exp.seed,
            "train": {"max_iters": 3 if smoke else 1200, "batch_size": 4 if smoke else 16,
                      "block_size": 64 if smoke else 128, "lr": 1e-3, "warmup_iters": 1 if smoke else 40,
                      "eval_interval": 3 if smoke else 400, "eval_batches": 2 if smoke else 5,
                      "weight_decay": 0.0, "seed": exp.seed, "device": "cpu"}}


def train_problems(exp: Any) -> list[ReasoningProblem]:
    s = sft_settings(exp, "traces")
    return make_problems(s["n_problems"], TRAIN_STEPS, seed=exp.seed)


def heldout(exp: Any, n: int | None = None) -> list[ReasoningProblem]:
    """Held-out problems of 2-5 steps, equal shares, none with a prompt of the SFT problems."""
    return heldout_problems(n or exp.pick(400, 80, 8), seed=exp.seed + 10_000, train=train_problems(exp),
                            steps=HELDOUT_STEPS)


def reasoning_sft(exp: Any, style: str) -> Path:
    """``lesson_base`` after SFT on the problems in ``style``; cached."""
    from mmlab.train.config import TrainConfig
    from mmlab.train.sft import sft

    s = sft_settings(exp, style)
    base = lesson_base(exp)

    def build(out: Path) -> None:
        data = write_jsonl(out / "problems.jsonl", train_problems(exp), s["no_think_share"], seed=exp.seed)
        sft(base, str(data), TrainConfig(out_dir=str(out), progress=False, **s["train"]), evaluate=False)

    return _build(exp, f"reasoning-{style}", s, build)


def load(exp: Any, style: str):
    from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model

    ckpt = reasoning_sft(exp, style)
    return load_model(ckpt).eval(), load_checkpoint_tokenizer(ckpt)


def by_steps(values: dict[str, float]) -> list[float]:
    """A per-step-count dict of ``reasoning_accuracy`` as a list in HELDOUT_STEPS order."""
    return [values.get(f"{k} steps", float("nan")) for k in HELDOUT_STEPS]



if __name__ == "__main__":  # build one style's model ahead of the experiments: python _common.py traces
    import sys

    import torch

    from mmlab.lab import Experiment

    torch.set_num_threads(1)
    print(reasoning_sft(Experiment("build", "build", mode="full"), sys.argv[1]))
