"""Decode speed and model bytes of weight-only quantization on this CPU: fp32, bf16, int8, int4. Prints JSON.

Shape: 4 layers x 256 (SwiGLU 704, 4 heads, character vocabulary of 65), random weights; greedy
decoding with the static KV cache through ``mmlab.infer.generate.generate``: a 16-token prompt, then
``new_tokens`` tokens, timed end to end (the prefill is one forward pass of 16 tokens; the decode
steps dominate). Every variant is a copy of the same fp32 model; the runs are interleaved (variant
after variant, repeat after repeat) so a slow moment of the machine hits all of them alike; we report
the median and the best run (the least disturbed one when other work shares the CPU).

Variants:
  fp32              the reference
  bf16              weights (and buffers) cast with ``model.to(torch.bfloat16)``; activations in bf16 too
  int8              per-output-channel scales; QuantLinear applies the scale to the output
  int4-g32          groups of 32 inputs, two values per byte; QuantLinear dequantizes the weight each call
  *-cached          the same, with ``cache_dequantized``: the float weight is kept beside the int one

What to expect on a CPU, and why: our QuantLinear has no fused kernel, so each call converts the
whole int weight to a float tensor (a read of the int bytes, a write and a re-read of 4 bytes per
weight) before the ordinary fp32 matmul. That is strictly *more* memory traffic and more work than
fp32, so int8/int4 decode is slower here; they win on *bytes*, not speed. The speed-up that makes
quantization worth it in llama.cpp or gpt-fast comes from kernels that dequantize in registers inside
the matmul, so only the int bytes cross the memory bus. The cached variants run at fp32 speed but hold
the fp32 weights *and* the int ones. bf16 halves the bytes; whether it is faster depends on the CPU's
bf16 support (the JSON's ``environment`` records ``cpu_capability`` and ``bf16_cpu``).

    python benchmarks/quant_decode.py            # 128 new tokens, median of 9 runs, ~15 s
    python benchmarks/quant_decode.py --quick    # 64 wide, 8 tokens, 2 runs (for tests)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from mmlab.config import ModelConfig
from mmlab.device import environment
from mmlab.infer.generate import generate
from mmlab.infer.quant import model_nbytes, quantize_model, set_dequantized_cache
from mmlab.model import MiniMindLM

VARIANTS = [
    {"name": "fp32"},
    {"name": "bf16", "dtype": "bf16"},
    {"name": "int8", "bits": 8},
    {"name": "int4-g32", "bits": 4, "group_size": 32},
    {"name": "int8-cached", "bits": 8, "cached": True},
    {"name": "int4-g32-cached", "bits": 4, "group_size": 32, "cached": True},
]
PROMPT_LEN = 16


def build(base: MiniMindLM, v: dict) -> MiniMindLM:
    model = copy.deepcopy(base)
    if v.get("dtype") == "bf16":
        model = model.to(torch.bfloat16)
    if "bits" in v:
        quantize_model(model, v["bits"], v.get("group_size"))
        set_dequantized_cache(model, v.get("cached", False))
    return model.eval()


def decode_seconds(model: MiniMindLM, prompt: list[int], new_tokens: int) -> float:
    t = time.perf_counter()
    out = generate(model, prompt, new_tokens, temperature=0.0)
    elapsed = time.perf_counter() - t
    assert len(out[0]) == new_tokens
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 wide, 8 new tokens, 2 runs (for tests)")
    args = parser.parse_args()
    width, new_tokens, runs = (64, 8, 2) if args.quick else (256, 128, 9)
    cfg = ModelConfig(vocab_size=65, hidden_size=width, n_layers=4, n_heads=max(1, width // 64), max_seq_len=256,
                      rope_theta=1e4)
    torch.manual_seed(0)
    base = MiniMindLM(cfg).eval()
    models = {v["name"]: build(base, v) for v in VARIANTS}
    prompt = torch.randint(0, cfg.vocab_size, (PROMPT_LEN,)).tolist()
    probe = torch.randint(0, cfg.vocab_size, (4, 64))
    with torch.no_grad():
        ref_logits = base(probe).logits
        ref_tokens = generate(base, prompt, new_tokens, temperature=0.0)[0]
    for model in models.values():  # warm-up (allocator, first-call overheads)
        decode_seconds(model, prompt, min(8, new_tokens))
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(runs):
        for name, model in models.items():
            times[name].append(decode_seconds(model, prompt, new_tokens))
    results = []
    for v in VARIANTS:
        model, name = models[v["name"]], v["name"]
        with torch.no_grad():
            logits = model(probe).logits.float()
            tokens = generate(model, prompt, new_tokens, temperature=0.0)[0]
        median = statistics.median(times[name])
        results.append({
            "variant": name,
            "decode_tokens_per_s": new_tokens / median,
            "ms_per_token": median / new_tokens * 1000,
            "best_tokens_per_s": new_tokens / min(times[name]),  # the least disturbed run, on a busy machine
            "runs_s": times[name],
            "model_bytes": model_nbytes(model),
            "logits_rel_error_vs_fp32": ((logits - ref_logits).norm() / ref_logits.norm()).item(),
            "greedy_tokens_equal_to_fp32": sum(a == b for a, b in zip(tokens, ref_tokens, strict=True)) / new_tokens,
        })
    fp32 = results[0]
    for r in results:
        r["speed_vs_fp32"] = r["decode_tokens_per_s"] / fp32["decode_tokens_per_s"]
        r["best_speed_vs_fp32"] = r["best_tokens_per_s"] / fp32["best_tokens_per_s"]
        r["bytes_vs_fp32"] = r["model_bytes"] / fp32["model_bytes"]
    q = {r["variant"]: r for r in results}
    print(json.dumps({
        "benchmark": "quant_decode",
        "setting": f"4 layers x {width}, vocab 65, random weights; batch 1, {PROMPT_LEN}-token prompt + {new_tokens} "
                   f"greedy tokens with the static KV cache; median of {runs} interleaved runs",
        "quick": args.quick,
        "environment": environment(),
        "results": results,
        "findings": {
            # speeds compared on the best runs: medians swing when other work shares the CPU
            "int8 on-the-fly is slower than fp32 here": q["int8"]["best_speed_vs_fp32"] < 1,
            "int4 on-the-fly is slower than fp32 here": q["int4-g32"]["best_speed_vs_fp32"] < 1,
            "int4 on-the-fly is slower than int8 here": q["int4-g32"]["best_speed_vs_fp32"]
            < q["int8"]["best_speed_vs_fp32"],
            "int4 holds fewer bytes than int8": q["int4-g32"]["model_bytes"] < q["int8"]["model_bytes"],
            "cached int8 holds more bytes than fp32": q["int8-cached"]["model_bytes"] > fp32["model_bytes"],
        },
    }, indent=2))


if __name__ == "__main__":
    main()
