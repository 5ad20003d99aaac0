"""GRPO vs PPO with a critic at equal rollouts: the same base checkpoint, the same verifiable tasks, the same
number of sampled completions (prompts per step x completions per prompt x rollout batches), the same
optimizer steps per rollout batch. Reports wall time, peak memory, the final rollout reward and held-out
exact match for each. Prints JSON.

Each method runs in its own fresh process, so its peak RSS (ru_maxrss) is its own; ``model_state_mib`` is
the batch-independent part, computed: weights + gradients + AdamW moments of what is trained (the policy;
for PPO also the critic) plus the frozen reference's weights.

    python benchmarks/ppo_vs_grpo.py --quick              # a tiny base, a few steps: under 2 minutes on 1 thread
    python benchmarks/ppo_vs_grpo.py --base runs/sr/dpo   # an existing SFT/DPO checkpoint (e.g. a speedrun's)
    python benchmarks/ppo_vs_grpo.py                      # builds a small base first (pretrain + SFT), longer

Without ``--base`` the base is built here (pretrain on synthetic stories, SFT on the synthetic tasks); a
tiny base scores ~0 on the tasks, so in ``--quick`` mode the rewards mostly measure the format reward and
the numbers that mean something are the time and memory ones.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (base building, RL settings) per mode; RL settings are the same for both methods
MODES = {
    "quick": {
        "model": {"hidden_size": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 64,
                  "vocab_size": 300},
        "pretrain": {"max_iters": 150, "batch_size": 8, "lr": 3e-3, "warmup_iters": 10, "eval_interval": 150},
        "sft": {"max_iters": 200, "batch_size": 8, "lr": 3e-3, "warmup_iters": 10, "eval_interval": 200},
        "rl_train": {"max_iters": 40, "batch_size": 4, "lr": 5e-4, "warmup_iters": 2, "eval_interval": 40,
                     "log_interval": 5},
        "rl": {"group_size": 4, "ppo_epochs": 2, "max_new_tokens": 8, "kl_coef": 0.04, "n_prompts": 500,
               "n_heldout": 50},
    },
    "full": {
        "model": {"hidden_size": 128, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 128,
                  "vocab_size": 512},
        "pretrain": {"max_iters": 600, "batch_size": 16, "lr": 3e-3, "warmup_iters": 30, "eval_interval": 200},
        "sft": {"max_iters": 800, "batch_size": 16, "lr": 1e-3, "warmup_iters": 30, "eval_interval": 200},
        "rl_train": {"max_iters": 120, "batch_size": 8, "lr": 5e-5, "warmup_iters": 5, "eval_interval": 120,
                     "log_interval": 10},
        "rl": {"group_size": 8, "ppo_epochs": 2, "max_new_tokens": 12, "kl_coef": 0.04, "n_prompts": 2000,
               "n_heldout": 200},
    },
}
COMMON = {"weight_decay": 0.0, "eval_batches": 2, "progress": False, "plot": False, "seed": 1337}


def lscpu_model_name() -> str:
    try:
        fields = json.loads(subprocess.run(["lscpu", "-J"], capture_output=True, text=True, check=True).stdout)
        return next(f["data"] for f in fields["lscpu"] if f["field"].startswith("Model name"))
    except (OSError, ValueError, KeyError, StopIteration, subprocess.CalledProcessError):
        return "unknown"


def build_base(folder: Path, mode: dict, device: str) -> Path:
    from mmlab.config import get_preset
    from mmlab.train.config import TrainConfig
    from mmlab.train.pretrain import pretrain
    from mmlab.train.sft import sft

    def cfg(name: str) -> TrainConfig:
        return TrainConfig(out_dir=str(folder / name), device=device, **COMMON, **mode[name])

    pretrain(get_preset("nano", **mode["model"]), "synthetic-stories", cfg("pretrain"), tokenizer="bpe")
    sft(folder / "pretrain", "synthetic-tasks", cfg("sft"), evaluate=False, n_synthetic=4000)
    return folder / "sft"


def current_rss_mib() -> float | None:
    try:  # /proc/self/statm: sizes in pages; the second is resident
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def child(method: str, base: str, out: str, mode_name: str, device: str, threads: int) -> dict:
    """One method in this (fresh) process: the stage function, then this process's memory."""
    import torch

    torch.set_num_threads(threads)
    from mmlab.train.checkpoint import load_model
    from mmlab.train.config import TrainConfig
    from mmlab.train.grpo import grpo
    from mmlab.train.ppo import model_state_bytes, peak_memory, ppo

    mode = MODES[mode_name]
    cfg = TrainConfig(out_dir=out, device=device, **COMMON, **mode["rl_train"])
    rss_before = current_rss_mib()  # torch and mmlab imported, nothing loaded yet
    t0 = time.perf_counter()
    record = (ppo if method == "ppo" else grpo)(base, cfg, **mode["rl"])
    wall = time.perf_counter() - t0  # stage function end to end: loading, held-out evaluation before/after, training
    memory = peak_memory(torch.device(device))
    if method == "ppo":
        state_mib = record["memory"]["model_state_mib"]
    else:
        policy = load_model(base)  # its size: the policy is trained, the reference frozen
        state_mib = model_state_bytes([policy], [policy] if mode["rl"]["kl_coef"] > 0 else []) / 2**20
    rewards = [r["reward"] for r in record["rollouts"]]
    tail = rewards[-max(1, len(rewards) // 4):]
    return {"method": method, "rollout_batches": len(rewards),
            "completions_sampled": len(rewards) * cfg.batch_size * mode["rl"]["group_size"],
            "optimizer_steps": record["steps"], "train_s": round(record["train_s"], 2),
            "stage_wall_s": round(wall, 2), **{k: round(v, 1) for k, v in memory.items()},
            "rss_before_stage_mib": round(rss_before, 1) if rss_before is not None else None,
            "model_state_mib": round(state_mib, 3), "first_reward": round(rewards[0], 4),
            "final_reward": round(sum(tail) / len(tail), 4), "reward_curve": [round(r, 4) for r in rewards],
            "heldout_exact_match": {"before": record["before"]["exact_match"],
                                    "after": record["after"]["exact_match"]},
            "heldout_prompts": record["heldout_prompts"]}


def run_child(args: argparse.Namespace, what: str, out: Path, base: str = "") -> dict:
    """``what`` (base | grpo | ppo) in a fresh process: Linux carries a parent's peak RSS into the children
    it starts, so the parent never imports torch before its children have run."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, __file__, "--child", what, "--base", base, "--out", str(out), "--threads",
           str(args.threads), "--device", args.device, *(["--quick"] if args.quick else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tiny base and a few steps (under 2 minutes)")
    ap.add_argument("--base", help="an SFT/DPO checkpoint to start both from (default: build one here)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each run (default 1)")
    ap.add_argument("--device", default="cpu", help="cpu (default) | cuda | auto")
    ap.add_argument("--child", choices=["base", "grpo", "ppo"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    mode_name = "quick" if args.quick else "full"
    if args.child == "base":
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps({"base": str(build_base(Path(args.out), MODES[mode_name], args.device))}))
        return
    if args.child:  # a run of one method, started by the parent below
        print(json.dumps(child(args.child, args.base, args.out, mode_name, args.device, args.threads)))
        return
    with tempfile.TemporaryDirectory(prefix="ppo_vs_grpo-") as tmp:
        t0 = time.perf_counter()
        base = args.base or run_child(args, "base", Path(tmp) / "base")["base"]
        base_s = time.perf_counter() - t0
        grpo_r, ppo_r = (run_child(args, method, Path(tmp) / method, base) for method in ("grpo", "ppo"))
    from mmlab.device import environment  # imports torch: only now, after the children

    print(json.dumps({
        "benchmark": "ppo_vs_grpo", "mode": mode_name, "cpu_model_name_lscpu": lscpu_model_name(),
        "threads": args.threads, "device": args.device,
        "base": args.base or f"built here in {base_s:.1f} s: {MODES[mode_name]['model']}",
        "settings": {"rl": MODES[mode_name]["rl"], "train": MODES[mode_name]["rl_train"]},
        "equal_rollouts": grpo_r["completions_sampled"] == ppo_r["completions_sampled"],
        "results": [grpo_r, ppo_r],
        "ppo_over_grpo": {k: round(ppo_r[k] / grpo_r[k], 2) for k in ("train_s", "model_state_mib", "peak_rss_mib")},
        "environment": environment(),
    }, indent=2))


if __name__ == "__main__":
    main()
