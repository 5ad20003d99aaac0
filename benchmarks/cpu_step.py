"""One training step on the CPU, measured side by side: fp32 or bf16 autocast, the plain tensor code or the
fused autograd Functions (``ModelConfig.fused_ops``), for the baby model, a lesson-sized model and
minimind-26m; where bf16 starts to pay (a sweep over the hidden size); and SDPA's forward and backward in
fp32 and bf16 over sequence lengths (why ``attention.CPU_BF16_SDPA_MIN_KEYS`` exists). Prints JSON.

Every variant of a model is built in this one process and timed in interleaved rounds (round r runs each
variant a few steps, in turn), so a noisy neighbour slows all of them alike; the figure is the median over
rounds. A step is forward, backward, gradient clipping and fused AdamW, as ``Trainer`` does it. MFU is the
achieved training FLOP/s (6 x params x tokens, plus attention; ``model.summary.flops_per_token``) over the
matmul peak of this process in the same dtype (the fastest of ten n x n x n GEMMs, measured first and last, the
higher kept).

"plain fp32" is the step before this benchmark was written (fused_ops=False, fp32): the baseline.

    python benchmarks/cpu_step.py                # full: ~6 minutes on 2 cores
    python benchmarks/cpu_step.py --quick        # fewer rounds, small models only (for tests)
    python benchmarks/cpu_step.py --compile      # also torch.compile (eager vs compiled; first-step cost)

The first compiled step's time is compilation plus a step: run with an empty ``TORCHINDUCTOR_CACHE_DIR`` for
the cold cost and again for the warm one (results/cpu_step_quick_compile_{cold,warm}_cache.json).

On a CPU without AVX512-BF16 or AMX (``mmlab.device.bf16_supported`` is False), bf16 is emulated, its GEMMs far
slower than fp32's (the JSON's ``matmul_peak_gflops`` says how much), so the full run would take hours. There the
bf16 variants and sweeps are left out (``"bf16": "skipped: ..."`` in the JSON, with the emulated peak measured
on a small GEMM) unless ``--emulated-bf16`` asks for them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time

import torch

MODELS = {  # name -> (preset or config overrides, batch, block)
    "baby": ({"preset": "shakespeare-char"}, 12, 64),
    "lesson-256": ({"preset": "shakespeare-char", "hidden_size": 256, "n_heads": 4, "vocab_size": 1024,
                    "max_seq_len": 128}, 16, 128),
    "minimind-26m": ({"preset": "minimind-26m", "max_seq_len": 256}, 4, 256),
}
SWEEP_HIDDEN = (32, 64, 128, 256, 512)
SDPA_LENGTHS = (64, 128, 256, 512, 1024)


def lscpu() -> dict[str, str]:
    try:
        fields = json.loads(subprocess.run(["lscpu", "-J"], capture_output=True, text=True, check=True).stdout)
        keep = ("Model name", "CPU family", "Model", "CPU(s)", "Thread(s) per core", "L2 cache", "L3 cache")
        return {f["field"].rstrip(":"): f["data"] for f in fields["lscpu"] if f["field"].rstrip(":") in keep}
    except (OSError, ValueError, KeyError, subprocess.CalledProcessError):
        return {}


def model_config(spec: dict, **changes):
    from mmlab.config import get_preset

    spec = dict(spec)
    return get_preset(spec.pop("preset"), **spec, **changes)


def make_step(cfg, batch: int, block: int, dtype: str, compiled: bool = False):
    """A closure running one training step of a fresh model, and the model's train FLOPs per token."""
    from mmlab.model import MiniMindLM
    from mmlab.model.summary import flops_per_token

    torch.manual_seed(0)
    model = MiniMindLM(cfg)
    forward = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, cfg.vocab_size, (batch, block))
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext

    def step():
        with amp():
            loss = forward(x, targets=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, flops_per_token(cfg, context=block)["train"]


def interleaved(steps: dict, rounds: int, per_round: int, warmup: int = 3) -> dict[str, float]:
    """Median ms per step of each closure over ``rounds`` interleaved rounds of ``per_round`` steps."""
    for s in steps.values():
        for _ in range(warmup):
            s()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for k, s in steps.items():
            t = time.perf_counter()
            for _ in range(per_round):
                s()
            times[k].append((time.perf_counter() - t) / per_round * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_model(name: str, rounds: int, per_round: int, compiled: bool,
                dtypes: tuple[str, ...] = ("fp32", "bf16")) -> dict:
    spec, batch, block = MODELS[name]
    variants = {f"{kind} {dtype}": (kind == "fused", dtype) for dtype in dtypes for kind in ("plain", "fused")}
    steps, flops = {}, 0.0
    for label, (fused, dtype) in variants.items():
        steps[label], flops = make_step(model_config(spec, fused_ops=fused), batch, block, dtype)
    first_step_s = {}
    if compiled:
        for dtype in dtypes:
            step, _ = make_step(model_config(spec, fused_ops=False), batch, block, dtype, compiled=True)
            t = time.perf_counter()
            step()
            first_step_s[f"compiled {dtype}"] = time.perf_counter() - t  # compilation (warm or cold cache) + a step
            steps[f"compiled {dtype}"] = step
    ms = interleaved(steps, rounds, per_round)
    tokens = batch * block
    base = ms["plain fp32"]
    from mmlab.model.summary import param_breakdown

    return {"model": name, "batch": batch, "block": block,
            "params": sum(param_breakdown(model_config(spec)).values()), "train_flops_per_token": flops,
            "variants": {k: {"ms_per_step": v, "tokens_per_s": tokens / v * 1e3, "speedup_vs_plain_fp32": base / v,
                         "gflops": tokens / v * 1e3 * flops / 1e9}
                         for k, v in ms.items()},
            "compile_first_step_s": first_step_s}


def bf16_crossover(rounds: int, per_round: int) -> list[dict]:
    """The baby model's shape (4 layers, block 64, batch 12) at several hidden sizes: fused fp32 vs fused bf16."""
    rows = []
    for h in SWEEP_HIDDEN:
        spec = {"preset": "shakespeare-char", "hidden_size": h, "n_heads": max(1, h // 32)}
        steps = {d: make_step(model_config(spec), 12, 64, d)[0] for d in ("fp32", "bf16")}
        ms = interleaved(steps, rounds, per_round)
        rows.append({"hidden_size": h, "fp32_ms": ms["fp32"], "bf16_ms": ms["bf16"],
                     "bf16_speedup": ms["fp32"] / ms["bf16"]})
    return rows


def sdpa_sweep(repeats: int, lengths=SDPA_LENGTHS, bf16: bool = True) -> list[dict]:
    """Causal SDPA, forward and forward+backward, fp32 vs bf16, 8 heads of 64, batch x length = 4096 tokens."""
    import torch.nn.functional as F

    rows = []
    for n in lengths:
        shape = (max(1, 4096 // n), 8, n, 64)
        row = {"length": n, "shape": list(shape)}
        for dtype in (torch.float32, torch.bfloat16) if bf16 else (torch.float32,):
            q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3))
            g = torch.randn(shape, dtype=dtype)

            def fwd(q=q, k=k, v=v):
                with torch.no_grad():
                    F.scaled_dot_product_attention(q, k, v, is_causal=True)

            def fwd_bwd(q=q, k=k, v=v, g=g):
                F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(g)

            ms = interleaved({"fwd": fwd, "fwd_bwd": fwd_bwd}, repeats, 1, warmup=2)
            tag = "fp32" if dtype == torch.float32 else "bf16"
            row[f"{tag}_fwd_ms"], row[f"{tag}_fwd_bwd_ms"] = ms["fwd"], ms["fwd_bwd"]
        if bf16:
            row["bf16_over_fp32_fwd_bwd"] = row["bf16_fwd_bwd_ms"] / row["fp32_fwd_bwd_ms"]
        rows.append(row)
    return rows


def main() -> None:
    from mmlab.device import bf16_supported, environment, matmul_peak, training_dtype

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds, the baby model, a short sweep")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd plain steps")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--emulated-bf16", action="store_true",
                        help="time bf16 even where the CPU only emulates it (far slower than fp32)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds, per_round = (3, 2) if args.quick else (7, 4)
    native = bf16_supported(torch.device("cpu"))
    bf16 = native or args.emulated_bf16

    def measure_peaks() -> dict[str, float]:
        return {"fp32": matmul_peak(torch.float32, repeats=10),
                "bf16": matmul_peak(torch.bfloat16, repeats=10) if bf16 else matmul_peak(torch.bfloat16, n=256,
                                                                                          repeats=3)}

    peaks = measure_peaks()
    models = ["baby"] if args.quick else list(MODELS)
    dtypes = ("fp32", "bf16") if bf16 else ("fp32",)
    out = {"benchmark": "cpu_step", "quick": args.quick, "lscpu": lscpu(), "environment": environment(),
           "matmul_peak_gflops": peaks,
           "bf16": "timed" if native else ("timed, emulated" if bf16 else
                                           f"skipped: {training_dtype(torch.device('cpu'))[1]} "
                                           f"({peaks['bf16']:.1f} GFLOP/s on a 256 x 256 x 256 GEMM, against "
                                           f"{peaks['fp32']:.0f} for fp32 at 1024); --emulated-bf16 times it anyway"),
           "models": [bench_model(m, rounds, per_round if m != "minimind-26m" else 1, args.compile, dtypes)
                      for m in models],
           "bf16_crossover": bf16_crossover(rounds, per_round) if not args.quick and bf16 else [],
           "sdpa": sdpa_sweep(3, SDPA_LENGTHS[:2], bf16) if args.quick else sdpa_sweep(7, bf16=bf16)}
    # the peak again at the end, the higher of the two kept: a neighbour that slowed the first measurement
    # would otherwise inflate every MFU (one run here measured half the fp32 peak and reported MFU 1.4)
    out["matmul_peak_gflops"] = {d: max(v, peaks[d]) for d, v in measure_peaks().items()}
    for m in out["models"]:
        for k, v in m["variants"].items():
            v["mfu"] = v["gflops"] / out["matmul_peak_gflops"]["bf16" if "bf16" in k else "fp32"]
    cpu = torch.device("cpu")
    choice = {m["model"]: training_dtype(cpu, model_config(MODELS[m["model"]][0])) for m in out["models"]}
    out["auto_dtype"] = {k: {"dtype": v[0], "why": v[1]} for k, v in choice.items()}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    sys.exit(main())
