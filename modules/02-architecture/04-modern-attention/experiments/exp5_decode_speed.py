"""Decode speed at long context: how fast does each attention variant generate one token when thousands of
tokens are already in its KV cache?

Timing only, kept apart from the quality experiments so that it can be re-run alone on a quiet machine.
Five untrained models of MiniMind-26M's shape (8 layers x 512, 8 query heads of 64; speed does not depend on
the weights' values):
  full attention, GQA 8:2 (the minimind-26m preset)
  sliding window 256 in every layer
  sliding window 256, every 4th layer global (layers 4 and 8; Gemma 3 uses 5 local to 1 global)
  MHA 8:8
  MLA, latent 128 + RoPE key 32 (mmlab's LatentAttention expands the cached latents into keys and values at
      every step; DeepSeek's kernels fold the expansion into the projections instead)
For each cached context length, the cache is filled with random keys and values (what a prefill would leave;
a windowed layer keeps its last 255), then we time single-token decode steps at batch 1 and report the median
over repeats, as tokens per second. Cache sizes come from ``mmlab.model.summary.kv_cache_bytes``
(``exp2_sliding_window`` checks them against a real cache).
"""

import statistics
import time

import torch

from mmlab.config import get_preset
from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.model import MiniMindLM
from mmlab.model.summary import kv_cache_bytes

WINDOW = 256
VARIANTS = {
    "full attention (GQA 8:2)": {},
    f"sliding window {WINDOW}": {"sliding_window": WINDOW},
    f"window {WINDOW}, every 4th layer global": {"sliding_window": WINDOW, "global_every": 4},
    "MHA 8:8": {"n_kv_heads": None},
    "MLA (latent 128 + RoPE key 32)": {"attention": "mla", "n_kv_heads": None, "mla_kv_rank": 128,
                                       "mla_rope_dim": 32},
}
FULL, WIN, HYBRID, MHA, MLA = VARIANTS


def fill(model: MiniMindLM, context: int, max_len: int, generator: torch.Generator):
    """A cache holding ``context`` positions of random keys and values in every layer (for MLA: latents and
    RoPE keys), as a prefill would leave it."""
    cfg = model.cfg
    cache = model.new_cache(max_len)
    for layer in range(cfg.n_layers):
        if cfg.attention == "mla":
            k = torch.randn(1, 1, context, cfg.mla_kv_rank, generator=generator)
            v = torch.randn(1, 1, context, cfg.mla_rope_dim, generator=generator)
        else:
            k = torch.randn(1, cfg.kv_heads, context, cfg.head_dim, generator=generator)
            v = torch.randn(1, cfg.kv_heads, context, cfg.head_dim, generator=generator)
        cache.update(layer, k, v)
    cache.advance(context)
    return cache


@torch.no_grad()
def decode_ms(model: MiniMindLM, context: int, steps: int, generator: torch.Generator) -> float:
    """Wall time (ms) of one greedy decode step after ``context`` cached tokens: the mean of ``steps`` steps after
    a warm-up step."""
    cache = fill(model, context, context + steps + 1, generator)
    x = torch.randint(0, model.cfg.vocab_size, (1, 1), generator=generator)
    x = model(x, cache=cache).logits[:, -1:].argmax(-1)  # warm-up (and frees what the fill left behind)
    t = time.perf_counter()
    for _ in range(steps):
        x = model(x, cache=cache).logits[:, -1:].argmax(-1)
    return (time.perf_counter() - t) / steps * 1e3


def main(exp: Experiment) -> None:
    contexts = exp.pick(full=[256, 1024, 4096, 16384], quick=[256, 4096], smoke=[16])
    steps = exp.pick(full=16, quick=8, smoke=2)
    reps = exp.pick(full=7, quick=3, smoke=1)
    exp.set_config(variants=VARIANTS, contexts=contexts, steps_per_repeat=steps, repeats=reps, batch=1,
                   seeds=[exp.seed], shape="minimind-26m (8 x 512, 8 query heads of 64, vocab 6400), untrained",
                   threads=torch.get_num_threads(), timing="median over repeats of the mean step time")
    models = {}
    for name, changes in VARIANTS.items():
        torch.manual_seed(exp.seed)
        models[name] = MiniMindLM(get_preset("minimind-26m", max_seq_len=max(contexts) + steps + 1, **changes)).eval()
    g = torch.Generator().manual_seed(exp.seed)
    times = {name: {c: [] for c in contexts} for name in VARIANTS}
    for rep in range(reps):  # round robin: a burst of load on a shared machine hits every variant alike
        for c in contexts:
            for name, model in models.items():
                times[name][c].append(decode_ms(model, c, steps, g))
        last = {n: statistics.median(times[n][contexts[-1]]) for n in VARIANTS}
        exp.log(f"repeat {rep + 1}/{reps}, ms/step at {contexts[-1]:,}: "
                + ", ".join(f"{n} {ms:.1f}" for n, ms in last.items()))
    runs = {}
    for name, model in models.items():
        ms = {c: statistics.median(times[name][c]) for c in contexts}
        runs[name] = {"params": model.num_params(), "ms_per_step": ms, "ms_all_repeats": times[name],
                      "tokens_per_s": {c: 1e3 / ms[c] for c in contexts},
                      "kv_bytes_fp32": {c: kv_cache_bytes(model.cfg, c, 4) for c in contexts}}
    del models
    exp.metric("runs", runs)
    exp.table("speed", ["variant", "params", *(f"tok/s at {c:,} cached" for c in contexts),
                        f"KV cache at {contexts[-1]:,} (MiB, fp32)"],
              [[k, r["params"], *r["tokens_per_s"].values(), r["kv_bytes_fp32"][contexts[-1]] / 2**20]
               for k, r in runs.items()],
              caption=f"Batch 1, greedy, one token per step; median over {reps} repeats of {steps} steps, on "
                      f"{torch.get_num_threads()} CPU threads. Untrained weights: speed only.")

    long, short = contexts[-1], contexts[0]
    tps = {k: r["tokens_per_s"] for k, r in runs.items()}
    growth = {k: r["ms_per_step"][long] / r["ms_per_step"][short] for k, r in runs.items()}
    exp.metric("step_time_growth", growth)
    exp.finding(f"At {long:,} cached tokens the sliding-window model decodes faster than full attention",
                tps[WIN][long] > tps[FULL][long], window=tps[WIN][long], full=tps[FULL][long],
                speedup=tps[WIN][long] / tps[FULL][long])
    exp.finding(f"From {short:,} to {long:,} cached tokens, full attention's step time grows more than the "
                "window's (a windowed layer reads at most its window)", growth[FULL] > growth[WIN],
                full=growth[FULL], window=growth[WIN])
    exp.finding(f"At {long:,} cached tokens the hybrid (2 global layers of 8) decodes between the window and full "
                "attention", tps[FULL][long] < tps[HYBRID][long] < tps[WIN][long], hybrid=tps[HYBRID][long])
    exp.finding(f"At {long:,} cached tokens MHA decodes slower than GQA (it reads 4x the cache)",
                tps[MHA][long] < tps[FULL][long], mha=tps[MHA][long], gqa=tps[FULL][long])
    exp.finding(f"MLA caches less than GQA, yet in this implementation decodes slower at {long:,} cached tokens "
                "(it re-expands every cached latent at every step)",
                runs[MLA]["kv_bytes_fp32"][long] < runs[FULL]["kv_bytes_fp32"][long]
                and tps[MLA][long] < tps[FULL][long],
                mla=tps[MLA][long], gqa=tps[FULL][long], mla_cache=runs[MLA]["kv_bytes_fp32"][long],
                gqa_cache=runs[FULL]["kv_bytes_fp32"][long])

    fig, axes = figure(2, 1, width=5.2, height=3.9)
    for i, (name, r) in enumerate(runs.items()):
        axes[0][0].plot(contexts, [r["tokens_per_s"][c] for c in contexts], "o-", color=f"C{i}", label=name)
        axes[0][1].plot(contexts, [r["kv_bytes_fp32"][c] / 2**20 for c in contexts], "o-", color=f"C{i}", label=name)
    axes[0][0].set_xscale("log", base=2)
    axes[0][0].set(xlabel="tokens already in the cache (log scale)", ylabel="decode tokens / s (batch 1)",
                   title=f"decode speed, {torch.get_num_threads()} CPU threads")
    axes[0][0].legend(fontsize=7)
    axes[0][1].set_xscale("log", base=2)
    axes[0][1].set_yscale("log")
    axes[0][1].set(xlabel="tokens in the cache (log scale)", ylabel="KV cache of one sequence (MiB, fp32)",
                   title="cache size (26M shape)")
    axes[0][1].legend(fontsize=7)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
