"""`mmlab quickstart`: the first thing a newcomer runs. Trains the ``shakespeare-char`` preset on
TinyShakespeare on a CPU in about two minutes, shows the loss falling, saves the plot and prints a
sample. With no mirror, cache or network it trains on the built-in synthetic story corpus instead
(and says so in one line)."""

from __future__ import annotations

import math
import sys

from mmlab.data.registry import DataError, dataset_path
from mmlab.errors import MMLabError
from mmlab.train.config import TrainConfig

# nanoGPT's CPU "baby GPT" budget (4 layers x 128, block 64, batch 12, 2000 steps) with our
# Llama-style model; lr 2e-3 won a small sweep (benchmarks/results/lr_sweep_modern_fp32.json).
RECIPE = {
    "preset": "shakespeare-char",
    "train": {"max_iters": 2000, "batch_size": 12, "block_size": 64, "lr": 2e-3, "min_lr": 2e-4,
              "warmup_iters": 100, "weight_decay": 0.1, "beta2": 0.99, "grad_clip": 1.0,
              "eval_interval": 250, "eval_batches": 20, "log_interval": 50},
}


def choose_data() -> str:
    try:
        dataset_path("tinyshakespeare")
        return "tinyshakespeare"
    except DataError as e:
        print(f"note: TinyShakespeare is unavailable ({e}); training on the built-in "
              "synthetic-stories corpus instead. Set MMLAB_DATA_MIRROR to a folder holding "
              "tinyshakespeare_input.txt to use the real text.", file=sys.stderr)
        return "synthetic-stories"


def quickstart(
    out: str = "runs/quickstart", max_iters: int | None = None, overwrite: bool = False, compile_model: bool = False
) -> None:
    from mmlab.infer.sample import sample_text
    from mmlab.train.pretrain import pretrain

    data = choose_data()
    train = dict(RECIPE["train"])
    if max_iters:
        train["max_iters"] = max_iters
        train["eval_interval"] = min(train["eval_interval"], max_iters)
    cfg = TrainConfig(out_dir=out, compile=compile_model, **train)
    print(f"training {RECIPE['preset']} on {data}: {cfg.max_iters} steps of {cfg.batch_size} x {cfg.block_size} "
          f"tokens; a model that guesses uniformly over V tokens scores ln(V), e.g. {math.log(65):.2f} for 65 "
          "characters",
          file=sys.stderr)
    try:
        result = pretrain(RECIPE["preset"], data, cfg, overwrite=overwrite)
    except MMLabError as e:
        if "already holds a run" in str(e):
            raise MMLabError(f"{out} already holds a run: pass --overwrite to replace it or --out for another "
                             "folder") from None
        raise
    print(f"\nfinal val loss {result.final_val_loss:.4f} after {result.steps} steps in {result.elapsed_s:.0f} s "
          f"({result.tokens_seen / result.elapsed_s:,.0f} tokens/s)")
    print(f"loss curve: {result.out_dir / 'loss.png'}   checkpoint: {result.out_dir / 'ckpt'}")
    print("\nsample (temperature 0.8):\n")
    prompt = "ROMEO:" if data == "tinyshakespeare" else "Once upon a time"
    for piece in sample_text(str(result.out_dir), prompt, max_new_tokens=300, temperature=0.8, seed=0):
        print(piece, end="", flush=True)
    print(f"\n\nsample more: mmlab sample --ckpt {result.out_dir} --prompt \"{prompt}\"")
