"""A GPU preset's pretraining, measured: tokens/s, MFU and peak memory of `mmlab speedrun`'s own settings
(bf16 autocast, SDPA, torch.compile, the preset's batch) on generated text. Prints JSON.

    python benchmarks/gpu_pretrain.py                          # minimind-26m, 300 steps, on the GPU
    python benchmarks/gpu_pretrain.py --preset minimind-104m --steps 200
    python benchmarks/gpu_pretrain.py --smoke                  # 3 tiny steps on the CPU (what the tests run)

The text is generated (8 MiB of Zipf-distributed random words, so BPE reaches its 6,400 tokens) and BPE
6400 is trained on it: the token ids, not their meaning, set the speed. MFU is the model's training
FLOPs per token (``mmlab.model.summary.flops_per_token``: 3 x forward, attention at the full context)
times tokens/s, over two peaks: the card's dense bf16 peak from its data sheet (when the card is in
``SPEC_TFLOPS``) and a bf16 matmul measured on it right before training. Steady-state speed is the
median over log windows after the first (which holds the compilation).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

# dense (no sparsity) bf16 tensor-core peaks of the vendors' data sheets, TFLOP/s
SPEC_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0}


def generated_text(n_chars: int, seed: int = 0) -> str:
    """Sentences of Zipf-distributed random words (a 30,000-word vocabulary of 2-9 letters), documents
    separated by <|endoftext|>: varied enough for a 6,400-token BPE, in any amount, with no download."""
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, size=rng.integers(2, 10))) for _ in range(30_000)]
    ranks = np.arange(1, len(words) + 1)
    probs = (1.0 / ranks) / (1.0 / ranks).sum()
    docs, size = [], 0
    while size < n_chars:
        ids = rng.choice(len(words), size=int(rng.integers(50, 300)), p=probs)
        doc = " ".join(words[i] for i in ids).capitalize() + "."
        docs.append(doc)
        size += len(doc) + 15
    return "\n<|endoftext|>\n".join(docs)


def spec_peak(device_name: str) -> float | None:
    return next((v for k, v in SPEC_TFLOPS.items() if k in device_name), None)


def matmul_peak_tflops(device, n: int = 8192, repeats: int = 10) -> float:
    """Median TFLOP/s of an n x n x n bf16 matmul on ``device``."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    times = []
    for i in range(repeats + 3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e12


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="minimind-26m", choices=["minimind-26m", "minimind-104m"])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="3 steps of batch 2 x 64 on the CPU, fp32, no compile")
    ap.add_argument("--cpu", action="store_true",
                    help="the preset's own batch, bf16 autocast, on the CPU (no compile): its peak RSS is a proxy "
                         "for the memory a GPU needs (weights, gradients, AdamW state, activations)")
    ap.add_argument("--out", default=None, help="also write the JSON here (e.g. benchmarks/results/gpu_pretrain.json)")
    args = ap.parse_args(argv)

    import torch

    from mmlab.config import ModelConfig
    from mmlab.device import environment, resolve_device
    from mmlab.model.summary import flops_per_token
    from mmlab.speedrun import get_speedrun_preset
    from mmlab.train.config import TrainConfig
    from mmlab.train.pretrain import pretrain

    p = get_speedrun_preset(args.preset)
    t = dict(p.pretrain)
    device = resolve_device("cpu" if (args.smoke or args.cpu) else "auto")
    if device.type != "cuda" and not (args.smoke or args.cpu):
        print(f"no CUDA device here ({device}); run with --smoke for a CPU check of the code path", file=sys.stderr)
        return 2
    steps, batch = (3, 2) if args.smoke else (args.steps, args.batch_size or t["batch_size"])
    block = 64 if args.smoke else t.get("block_size", p.model.max_seq_len)
    dtype = "fp32" if args.smoke else t["dtype"]
    compile_model = False if (args.smoke or args.cpu or args.no_compile) else t.get("compile", False)
    peak_measured = None if (args.smoke or args.cpu) else matmul_peak_tflops(device)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "stories.txt"
        corpus.write_text(generated_text(200_000 if args.smoke else 8 << 20))
        cfg = TrainConfig(out_dir=f"{tmp}/run", max_iters=steps, batch_size=batch, block_size=block,
                          grad_accum=t.get("grad_accum", 1), lr=t["lr"],
                          warmup_iters=min(t["warmup_iters"], steps // 3), schedule=t.get("schedule", "cosine"),
                          eval_interval=steps, eval_batches=2 if args.smoke else 10,
                          log_interval=1 if args.smoke else 25, dtype=dtype, compile=compile_model,
                          device=str(device), progress=False)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        result = pretrain(p.model, str(corpus), cfg, tokenizer="bpe", stream=False)
        wall = time.perf_counter() - t0
        trained = ModelConfig.from_json(result.out_dir / "ckpt" / "config.json")  # its vocabulary: the tokenizer's
    windows = [r for r in result.history if "tokens_per_s" in r]
    rates = [r["tokens_per_s"] for r in windows[1:]] or [r["tokens_per_s"] for r in windows]
    tokens_per_s = statistics.median(rates)
    fpt = flops_per_token(trained, context=block)["train"]
    achieved = tokens_per_s * fpt / 1e12
    env = environment()
    spec = spec_peak(env.get("cuda_device", "")) if device.type == "cuda" else None
    report = {
        "benchmark": "gpu_pretrain", "preset": args.preset, "smoke": args.smoke, "device": str(device),
        "steps": steps, "vocab_size": trained.vocab_size, "batch_size": batch, "block_size": block,
        "grad_accum": t.get("grad_accum", 1),
        "dtype": dtype, "compile": compile_model, "tokens_per_s": tokens_per_s,
        "first_window_s": windows[0]["train_s"] if windows else None,  # includes compilation when compiled
        "train_flops_per_token": fpt, "achieved_tflops": achieved,
        "spec_bf16_tflops": spec, "mfu_vs_spec": achieved / spec if spec else None,
        "matmul_bf16_tflops": peak_measured, "mfu_vs_matmul": achieved / peak_measured if peak_measured else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # the process, CPU side
        "final_val_loss": result.final_val_loss, "wall_s": wall,
        "hours_for_the_preset_budget": p.pretrain_tokens / tokens_per_s / 3600,
        "environment": env,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
