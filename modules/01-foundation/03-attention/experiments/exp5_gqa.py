"""MHA vs GQA vs MQA: what do fewer key/value heads save, what do they cost?

Eight query heads share 8 (MHA), 2 (GQA, MiniMind's choice) or 1 (MQA) key/value heads. We measure
(1) parameters, (2) KV-cache bytes per token, (3) val loss on TinyShakespeare at the same budget, and
(4) decode speed with the KV cache: for the small trained models, and for a MiniMind-26M-sized model
(512 wide, 8 layers) decoding a batch with a long cache, where reading the cache is a large part of
each step. The cache there is filled with random keys/values (decode cost does not depend on their
values), so no long prefill is needed.
"""

import statistics
import time

import torch

import mmlab.model.attention as attention_module
from mmlab.config import get_preset
from mmlab.infer.generate import generate
from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_config, train_lm
from mmlab.lab.plots import figure
from mmlab.model import MiniMindLM
from mmlab.model.summary import kv_cache_bytes_per_token

VARIANTS = {"MHA (8 KV heads)": 8, "GQA (2 KV heads)": 2, "MQA (1 KV head)": 1}


def decode_ms_per_step(model: MiniMindLM, batch: int, context: int, steps: int, reps: int) -> float:
    """Median wall time of one decode step (batch tokens) with ``context`` cached positions."""
    cfg = model.cfg
    times = []
    with torch.no_grad():
        for _ in range(reps):
            cache = model.new_cache(context + steps)
            for layer in range(cfg.n_layers):
                kv = torch.randn(batch, cfg.kv_heads, context, cfg.head_dim)
                cache.update(layer, kv, kv.clone())
            cache.advance(context)
            x = torch.randint(0, cfg.vocab_size, (batch, 1))
            model(x, cache=cache)  # warm-up step
            t = time.perf_counter()
            for _ in range(steps - 1):
                x = model(x, cache=cache).logits[:, -1:].argmax(-1)
            times.append((time.perf_counter() - t) / (steps - 1))
    return statistics.median(times) * 1e3


def main(exp: Experiment) -> None:
    steps = exp.pick(full=800, quick=60, smoke=2)
    lr = 2e-3
    big = exp.pick(
        full={"batch": 8, "context": 1024, "steps": 24, "reps": 3},
        quick={"batch": 4, "context": 512, "steps": 8, "reps": 2},
        smoke={"batch": 1, "context": 16, "steps": 3, "reps": 1},
    )
    n_new = exp.pick(full=256, quick=64, smoke=4)
    exp.set_config(
        variants=VARIANTS,
        steps=steps,
        lr=lr,
        small="shakespeare-char with 8 heads",
        big="minimind-26m shape",
        big_decode=big,
        small_decode_tokens=n_new,
        threads=torch.get_num_threads(),
    )
    runs = {}
    for name, kv in VARIANTS.items():
        cfg = shakespeare_config(n_heads=8, n_kv_heads=kv)
        r = train_lm(cfg, steps, lr, seed=exp.seed, eval_batches=exp.pick(50, 5, 2))
        model = r.pop("model").eval()
        generate(model, [0], 8, temperature=0.0)  # warm-up: the first call pays one-time costs
        small = []
        for _ in range(3):
            t = time.perf_counter()
            generate(model, [0], n_new, temperature=0.0)
            small.append(n_new / (time.perf_counter() - t))
        small_tps = statistics.median(small)
        big_model = MiniMindLM(get_preset("minimind-26m", n_kv_heads=kv, max_seq_len=2048)).eval()
        ms = decode_ms_per_step(big_model, big["batch"], big["context"], big["steps"], big["reps"])
        copy_ms = None
        if 1 < kv < 8 and attention_module._SDPA_GQA:  # the textbook way: repeat K/V to every query head
            attention_module._SDPA_GQA = False
            try:
                copy_ms = decode_ms_per_step(big_model, big["batch"], big["context"], big["steps"], big["reps"])
            finally:
                attention_module._SDPA_GQA = True
        runs[name] = {
            **r,
            "kv_heads": kv,
            "big_decode_ms_per_step_repeat_kv": copy_ms,
            "params_small": model.num_params(),
            "params_big": big_model.num_params(),
            "kv_bytes_small_fp32": kv_cache_bytes_per_token(cfg, 4),
            "kv_bytes_big_fp32": kv_cache_bytes_per_token(big_model.cfg, 4),
            "small_decode_tokens_per_s": small_tps,
            "big_decode_ms_per_step": ms,
            "big_decode_tokens_per_s": big["batch"] / ms * 1e3,
        }
        exp.log(f"{name}: val {r['final_val_loss']:.4f}, small decode {small_tps:.0f} tok/s, big step {ms:.1f} ms")
        del big_model
    exp.metric("runs", runs)
    exp.table(
        "final",
        [
            "variant",
            "params (small)",
            "KV bytes / token (small, fp32)",
            "final val loss",
            "decode tok/s (small, batch 1)",
            "params (26M shape)",
            "KV bytes / token (26M, fp32)",
            f"decode tok/s (26M, batch {big['batch']}, {big['context']} cached)",
        ],
        [
            [
                k,
                r["params_small"],
                r["kv_bytes_small_fp32"],
                r["final_val_loss"],
                r["small_decode_tokens_per_s"],
                r["params_big"],
                r["kv_bytes_big_fp32"],
                r["big_decode_tokens_per_s"],
            ]
            for k, r in runs.items()
        ],
        caption=f"Small: 128 wide, 4 layers, {steps} steps at lr {lr:g}, one seed. Decode speeds are medians on "
        f"{torch.get_num_threads()} CPU threads; the 26M-shape model is untrained (speed only).",
    )
    mha, gqa, mqa = (runs[k] for k in VARIANTS)
    if gqa["big_decode_ms_per_step_repeat_kv"] is not None:
        rep = gqa["big_decode_ms_per_step_repeat_kv"]
        exp.metric("gqa_repeat_kv_slowdown", rep / gqa["big_decode_ms_per_step"])
        exp.table("repeat_kv", ["GQA decode step (26M shape)", "ms per step", "tokens / s"],
                  [["K/V passed grouped to SDPA (enable_gqa, what mmlab does)", gqa["big_decode_ms_per_step"],
                    gqa["big_decode_tokens_per_s"]],
                   ["K/V repeated to 8 heads first (repeat_kv copy)", rep, big["batch"] / rep * 1e3],
                   ["MHA, for comparison", mha["big_decode_ms_per_step"], mha["big_decode_tokens_per_s"]]],
                  caption=f"batch {big['batch']}, {big['context']} cached tokens, median of {big['reps']}.")
        exp.finding("Repeating GQA's K/V heads (a copy per step) makes decoding slower than passing them grouped",
                    rep > gqa["big_decode_ms_per_step"], repeat_ms=rep, grouped_ms=gqa["big_decode_ms_per_step"])
    exp.finding(
        "KV-cache bytes per token shrink in proportion to the KV heads (MHA = 4x GQA = 8x MQA)",
        mha["kv_bytes_big_fp32"] == 4 * gqa["kv_bytes_big_fp32"] == 8 * mqa["kv_bytes_big_fp32"],
        mha=mha["kv_bytes_big_fp32"],
        gqa=gqa["kv_bytes_big_fp32"],
        mqa=mqa["kv_bytes_big_fp32"],
    )
    exp.finding(
        "Fewer KV heads also means fewer parameters (smaller K and V projections)",
        mha["params_small"] > gqa["params_small"] > mqa["params_small"],
        mha=mha["params_small"],
        gqa=gqa["params_small"],
        mqa=mqa["params_small"],
    )
    exp.finding(
        "With a long cache, GQA decodes faster than MHA (26M shape)",
        gqa["big_decode_tokens_per_s"] > mha["big_decode_tokens_per_s"],
        mha=mha["big_decode_tokens_per_s"],
        gqa=gqa["big_decode_tokens_per_s"],
        speedup=gqa["big_decode_tokens_per_s"] / mha["big_decode_tokens_per_s"],
    )
    exp.finding(
        "GQA's val loss is within 0.05 nats of MHA's at this scale",
        abs(gqa["final_val_loss"] - mha["final_val_loss"]) < 0.05,
        mha=mha["final_val_loss"],
        gqa=gqa["final_val_loss"],
    )
    exp.finding(
        "MQA's val loss is within 0.05 nats of MHA's at this scale",
        abs(mqa["final_val_loss"] - mha["final_val_loss"]) < 0.05,
        mha=mha["final_val_loss"],
        mqa=mqa["final_val_loss"],
    )

    fig, axes = figure(3, 1, width=4.2, height=3.6)
    names = list(VARIANTS)
    short = [n.split()[0] for n in names]
    axes[0][0].bar(short, [runs[n]["kv_bytes_big_fp32"] / 1024 for n in names])
    axes[0][0].set(ylabel="KiB per token (26M shape, fp32)", title="KV-cache size")
    axes[0][1].bar(short, [runs[n]["big_decode_tokens_per_s"] for n in names])
    axes[0][1].set(ylabel="tokens / s", title=f"decode, batch {big['batch']}, {big['context']} cached")
    axes[0][2].bar(short, [runs[n]["final_val_loss"] for n in names])
    lo = min(runs[n]["final_val_loss"] for n in names)
    axes[0][2].set_ylim(lo - 0.1, lo + 0.1)
    axes[0][2].set(ylabel="val loss (nats / char)", title=f"quality after {steps} steps")
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
