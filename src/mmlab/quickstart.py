"""`mmlab quickstart`: the first thing a newcomer runs. Trains the ``shakespeare-char`` preset on
TinyShakespeare on a CPU in about two minutes, shows the loss falling, saves the plot and prints a
sample. With no mirror, cache or network it trains on the built-in synthetic story corpus instead
(and says so in one line). Then it runs the three experiments of the "30-minute quick start" in
quick mode (normalization, RoPE, attention by hand) and prints where their plots are."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

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


# The "30-minute quick start" path: one experiment per idea, each a few seconds in --quick mode.
# (topic, experiment, whether it reads TinyShakespeare)
QUICK_EXPERIMENTS = (
    ("normalization", "01-normalization/exp1_deep_stack", True),
    ("RoPE", "02-position-encoding/exp3_rope_relative", False),
    ("attention", "03-attention/exp1_attention_by_hand", False),
)


def run_quick_experiments(out_dir: Path, have_text: bool = True) -> int:
    """Run the quick-start experiments (``--quick``) into ``out_dir``; report findings and plots.
    Returns the number that failed."""
    from mmlab.lab.registry import find, modules_root

    try:
        root = modules_root()
    except MMLabError as e:
        print(f"\nnote: skipping the quick-start experiments: {e}", file=sys.stderr)
        return 0
    print(f"\nthe 30-minute quick start, in quick mode (results and plots in {out_dir}):")
    failed = 0
    for topic, experiment_id, needs_text in QUICK_EXPERIMENTS:
        if needs_text and not have_text:
            print(f"  {topic:<14} {experiment_id} skipped: it reads TinyShakespeare, which is unavailable")
            continue
        script = find(experiment_id, root)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(script.path), "--quick", "--out", str(out_dir)],
                              capture_output=True, text=True, timeout=600)
        took = time.perf_counter() - t0
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"  {topic:<14} {experiment_id} FAILED after {took:.0f} s: {last}")
            failed += 1
            continue
        result = json.loads((out_dir / f"{script.path.stem}.json").read_text())
        holds = sum(f["holds"] for f in result["findings"])
        plots = ", ".join(str(out_dir / name) for name in result["figures"]) or "none"
        print(f"  {topic:<14} {experiment_id} ({took:.0f} s): {holds}/{len(result['findings'])} findings hold; "
              f"plot: {plots}")
    print("  read why in modules/01-foundation/*/teaching.md; run the full versions with `mmlab exp run ID`")
    return failed


def _clear_experiments(folder: Path) -> None:
    """--overwrite: remove the quick-start experiment outputs (and nothing a user put there)."""
    if not folder.is_dir():
        return
    foreign = [p.name for p in folder.iterdir() if not (p.name.startswith("exp") and p.suffix in (".json", ".png"))]
    if foreign:
        raise MMLabError(f"refusing to overwrite {folder}: it holds files the quickstart did not write "
                         f"({', '.join(foreign[:5])})")
    shutil.rmtree(folder)


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
    out: str = "runs/quickstart",
    max_iters: int | None = None,
    overwrite: bool = False,
    compile_model: bool = False,
    experiments: bool = True,
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
    experiments_dir = Path(out) / "experiments"
    try:
        if overwrite:
            _clear_experiments(experiments_dir)
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
    if experiments:
        failed = run_quick_experiments(experiments_dir, have_text=data == "tinyshakespeare")
        if failed:
            raise MMLabError(f"{failed} quick-start experiment(s) failed (see above)")
