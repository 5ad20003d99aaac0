"""Pretraining throughput and quality on a CPU, in nanoGPT's "baby GPT" setting. Prints JSON.

Setting (nanoGPT's README CPU command): 4 layers, 4 heads, 128 hidden, block 64, batch 12, character
vocabulary of TinyShakespeare, 2000 iterations, lr 1e-3 -> 1e-4 cosine with 100 warmup, no dropout.
Two architectures of our one model at that size:
  * gpt2:   LayerNorm, learned positions, GELU, MHA (nanoGPT's architecture), lr 1e-3 (nanoGPT's);
  * modern: RMSNorm, RoPE, SwiGLU (our defaults; MHA at 4 heads), lr 2e-3 (tuned);
each in fp32 and bf16 autocast, and each in fp32 with torch.compile. Each run is a child process
(so peak RSS is its own); the matmul peak that MFU is measured against (fp32, and the run's dtype) is
measured in the same child, right before and after training, the higher kept. Validation loss: 100 fixed
batches every 125 steps; the seconds to reach nanoGPT's 1.886 count training time only (evaluation and
checkpoints excluded).

    python benchmarks/pretrain_cpu.py                 # full: 6 runs x 2000 iterations (~12 min)
    python benchmarks/pretrain_cpu.py --quick         # 60 iterations, the 4 uncompiled runs (for tests)
    python benchmarks/pretrain_cpu.py --runs modern-fp32 --lr 3e-3

Needs TinyShakespeare (MMLAB_DATA_MIRROR or the cache). On a CPU without AVX512-BF16 or AMX, bf16 is only
emulated (its GEMMs far slower than fp32's): the bf16 runs are left out unless ``--runs`` names them, and the JSON
says so (``"skipped"``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ARCHS = {
    "gpt2": {"norm": "layernorm", "pos_encoding": "learned", "ffn_act": "gelu", "n_kv_heads": None},
    "modern": {},
}
# Peak learning rates: nanoGPT's 1e-3 for its own architecture; 2e-3 for ours, the best final val loss
# of a sweep over 2e-3 / 3e-3 / 5e-3 (results/lr_sweep_modern_fp32.json; `--runs modern-fp32 --lr X`).
LR = {"gpt2": 1e-3, "modern": 2e-3}
RUNS = [f"{a}-{d}" for a in ARCHS for d in ("fp32", "bf16")]
COMPILED = [f"{a}-fp32-compile" for a in ARCHS]


def matmul_peak(dtype_name: str, n: int = 1024, repeats: int = 20) -> float:
    """Median GFLOP/s of an n x n x n matmul (torch's CPU GEMM) in this process."""
    import torch

    from mmlab.device import matmul_peak as peak

    return peak(torch.float32 if dtype_name == "fp32" else torch.bfloat16, n, repeats)


def one_run(name: str, iters: int, lr: float | None, eval_interval: int) -> dict:
    import torch

    from mmlab.config import get_preset
    from mmlab.model.summary import flops_per_token
    from mmlab.train.config import TrainConfig
    from mmlab.train.pretrain import pretrain

    arch, dtype, *flags = name.split("-")
    compile_model = "compile" in flags
    lr = lr or LR[arch]
    peak_dtypes = ("fp32",) if dtype == "fp32" else ("fp32", dtype)  # an emulated-bf16 GEMM peak costs ~1 min
    peak = {d: matmul_peak(d) for d in peak_dtypes}
    model_cfg = get_preset("shakespeare-char", **ARCHS[arch])
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(out_dir=f"{out}/run", max_iters=iters, batch_size=12, block_size=64, lr=lr,
                          min_lr=lr / 10, warmup_iters=min(100, iters // 10), eval_interval=eval_interval,
                          log_interval=max(1, iters // 40),
                          dtype=dtype, compile=compile_model, weight_decay=0.1, beta2=0.99, progress=False,
                          eval_batches=100 if iters >= 1000 else 20)
        t0 = time.perf_counter()
        result = pretrain(model_cfg, "tinyshakespeare", cfg, tokenizer="char")
        wall = time.perf_counter() - t0
    # the peak again after the run, the higher kept: a neighbour during the first measurement inflates the MFU
    peak = {d: max(v, matmul_peak(d)) for d, v in peak.items()}
    train_records = [r for r in result.history if "tokens_per_s" in r]
    # steady-state speed: median over log windows, skipping the first (warm-up, allocation, compilation)
    rates = [r["tokens_per_s"] for r in train_records[1:]] or [r["tokens_per_s"] for r in train_records]
    first_window_s = train_records[0]["train_s"] if train_records else None
    tokens_per_s = statistics.median(rates)
    tokens_per_iter = 12 * 64
    cfg_used = model_cfg.replace(vocab_size=65)
    train_flops_per_token = flops_per_token(cfg_used, context=64)["train"]
    achieved = tokens_per_s * train_flops_per_token / 1e9
    evals = [r for r in result.history if "val_loss" in r]
    # training seconds (evaluation and checkpoints excluded) until the first eval at or below nanoGPT's 1.886
    first_below_1886 = next((r["train_s"] for r in evals if r["val_loss"] <= 1.886), None)
    return {
        "run": name,
        "iters": iters,
        "lr": lr,
        "compile": compile_model,
        "ms_per_iter": 1000 * tokens_per_iter / tokens_per_s,
        "tokens_per_s": tokens_per_s,
        "achieved_gflops": achieved,
        "matmul_peak_gflops": peak,
        "mfu_vs_fp32_peak": achieved / peak["fp32"],
        "mfu_vs_own_dtype_peak": achieved / peak[dtype],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_s": wall,
        "first_log_window_s": first_window_s,  # includes compilation when compiled
        "train_s": train_records[-1]["train_s"] if train_records else None,
        "val_loss": {r["step"]: round(r["val_loss"], 4) for r in evals},
        "final_val_loss": evals[-1]["val_loss"] if evals else None,
        "seconds_to_val_1.886": first_below_1886,
        "params": sum(p for p in [_params(cfg_used)]),
        "torch_threads": torch.get_num_threads(),
    }


def _params(cfg) -> int:
    from mmlab.model.summary import param_breakdown

    return sum(param_breakdown(cfg).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="60 iterations per run, uncompiled runs only")
    parser.add_argument("--runs", nargs="*", default=None, choices=RUNS + COMPILED,
                        help="default: all (the four uncompiled ones with --quick)")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None, help=f"peak learning rate for every run (default: {LR})")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration in this process
    args = parser.parse_args()
    iters = args.iters or (60 if args.quick else 2000)
    eval_interval = min(125, iters)
    if args.one:
        print(json.dumps(one_run(args.one, iters, args.lr, eval_interval)))
        return
    import torch

    from mmlab.device import bf16_supported, training_dtype

    runs = args.runs or (RUNS if args.quick else RUNS + COMPILED)
    skipped = {}
    if not args.runs and not bf16_supported(torch.device("cpu")):
        why = training_dtype(torch.device("cpu"))[1]
        skipped = {r: why for r in runs if "-bf16" in r}
        runs = [r for r in runs if r not in skipped]
    results = []
    for name in runs:
        cmd = [sys.executable, __file__, "--one", name, "--iters", str(iters)]
        if args.lr:
            cmd += ["--lr", str(args.lr)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        if proc.returncode != 0:
            sys.exit(f"run {name} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(json.dumps({
        "benchmark": "pretrain_cpu",
        "setting": "nanoGPT baby GPT: 4 layers, 4 heads, 128 hidden, block 64, batch 12, char vocab",
        "quick": args.quick,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "results": results,
        "skipped": skipped,
    }, indent=2))


if __name__ == "__main__":
    main()
