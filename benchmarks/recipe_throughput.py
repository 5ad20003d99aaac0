"""Training throughput of the tiny-model recipes' shape on this CPU: fp32 vs bf16 autocast, eager vs
torch.compile, with and without dropout. Prints JSON.

Shape: 4 layers x 256, 4 heads, 256 tokens of context, 32 rows (8,192 tokens per step), character
vocabulary; one full training step (forward, backward, clipping, fused AdamW) on random tokens,
median over the timed steps after warm-up (compilation happens in the warm-up). Dropout is on the
sub-layer outputs only. Dropout on the attention weights under compile + bf16 once gave NaN gradients
on this CPU with torch 2.13; the `nan_with_attention_dropout` entry checks it again each run (the run
committed in results/ no longer reproduces it).

    python benchmarks/recipe_throughput.py            # 6 configurations, ~4 minutes
    python benchmarks/recipe_throughput.py --quick    # 2 small configurations, for tests
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mmlab.config import ModelConfig
from mmlab.device import environment
from mmlab.model import MiniMindLM

CONFIGS = [
    {"dtype": "fp32", "compile": False, "dropout": 0.0},
    {"dtype": "bf16", "compile": False, "dropout": 0.0},
    {"dtype": "fp32", "compile": True, "dropout": 0.0},
    {"dtype": "bf16", "compile": True, "dropout": 0.0},
    {"dtype": "bf16", "compile": False, "dropout": 0.1},
    {"dtype": "bf16", "compile": True, "dropout": 0.1},
]


def model_config(width: int, dropout: float, attn_dropout: float = 0.0) -> ModelConfig:
    return ModelConfig(vocab_size=65, hidden_size=width, n_layers=4, n_heads=max(1, width // 64), max_seq_len=256,
                       rope_theta=1e4, dropout=dropout, attn_dropout=attn_dropout)


def step_fn(model: MiniMindLM, dtype: str, compile_: bool):
    forward = torch.compile(model) if compile_ else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = forward(x, y).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(norm)

    return step


def measure(c: dict, width: int, rows: int, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model = MiniMindLM(model_config(width, c["dropout"]))
    step = step_fn(model, c["dtype"], c["compile"])
    x = torch.randint(0, 65, (rows, 256))
    y = torch.randint(0, 65, (rows, 256))
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        step(x, y)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    ms = statistics.median(times) * 1000
    return {**c, "ms_per_step": ms, "tokens_per_s": rows * 256 / ms * 1000}


def nan_with_attention_dropout(width: int) -> bool:
    """Whether attention-weight dropout under compile + bf16 gives non-finite gradients here."""
    torch.manual_seed(0)
    model = MiniMindLM(model_config(width, 0.1, attn_dropout=0.1))
    forward = torch.compile(model)
    x = torch.randint(0, 65, (8, 256))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        forward(x, x.roll(-1, 1)).loss.backward()
    return not all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 wide, 4 rows, eager only (for tests)")
    args = parser.parse_args()
    width, rows, steps, warmup = (64, 4, 3, 1) if args.quick else (256, 32, 10, 3)
    configs = [c for c in CONFIGS if not c["compile"]][:2] if args.quick else CONFIGS
    results = [measure(c, width, rows, steps, warmup) for c in configs]
    base = results[0]["tokens_per_s"]
    for r in results:
        r["speedup_vs_fp32_eager"] = r["tokens_per_s"] / base
    print(json.dumps({
        "benchmark": "recipe_throughput",
        "setting": f"4 layers x {width}, 256 tokens x {rows} rows per step, char vocabulary; median of {steps} steps",
        "quick": args.quick,
        "environment": environment(),
        "results": results,
        "nan_with_attention_dropout": None if args.quick else nan_with_attention_dropout(width),
    }, indent=2))


if __name__ == "__main__":
    main()
