"""Sliding-window attention against full attention at the same training budget: what does the window cost in
loss, where in the sequence, and what does it save in KV-cache memory?

Three versions of the 4-layer, 128-wide model (4 heads of 32), trained on 256-character windows of
TinyShakespeare with the same seed, data order, learning rate and number of steps:
  full attention            every query sees every earlier character (up to 255 back)
  sliding window 32         every layer: a query sees itself and the 31 characters before it (Mistral)
  window 32 + global        layers 2 and 4 see everything, layers 1 and 3 the window (gpt-oss alternates so)
The loss is measured at every position of held-out windows of 256 characters: at positions 1-32 all three
see the same characters, beyond that the full model sees more. The cache is measured two ways: from the
config (``mmlab.model.summary.kv_cache_bytes``) and as the bytes a real ``KVCache`` holds after reading a
held-out text (``KVCache.nbytes``). Decode speed is ``exp5_decode_speed`` (timing, run apart).
"""

import torch
from _common import loss_per_position, reread, span_means, val_windows

from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_config, train_lm
from mmlab.lab.plots import figure
from mmlab.model.summary import kv_cache_bytes, kv_cache_bytes_per_token

CONTEXT = 256
WINDOW = 32
VARIANTS = {
    "full attention": {},
    f"sliding window {WINDOW}": {"sliding_window": WINDOW},
    f"window {WINDOW} + every 2nd layer global": {"sliding_window": WINDOW, "global_every": 2},
}
SPANS = {"1-32": (0, 32), "33-64": (32, 64), "65-128": (64, 128), "129-256": (128, 256)}
EARLY, LATE = "1-32", "129-256"
CONTEXTS = [256, 1024, 4096, 32768]  # for the cache-size arithmetic
READ_LEN = 1024  # the real cache is filled with this many held-out characters


def held_positions(cfg, length: int) -> int:
    """Positions a growing ``KVCache`` holds after a forward pass over ``length`` tokens, summed over layers:
    a windowed layer keeps window - 1 between calls (the next query brings its own key), a global one all."""
    return sum(min(length, w - 1) if (w := cfg.layer_window(i)) else length for i in range(cfg.n_layers))


def main(exp: Experiment) -> None:
    steps = exp.pick(full=600, quick=60, smoke=2)
    lr, batch = 2e-3, 8
    n_windows = exp.pick(full=64, quick=12, smoke=2)
    exp.set_config(variants=VARIANTS, steps=steps, lr=lr, batch=f"{batch} x {CONTEXT}", window=WINDOW,
                   seeds=[exp.seed], eval_windows=n_windows, spans=SPANS, read_length=READ_LEN,
                   model="shakespeare-char (4 layers x 128, 4 heads of 32, RoPE theta 1e4), max_seq_len 256",
                   threads=torch.get_num_threads())
    x, y = val_windows(n_windows, CONTEXT)
    text, _ = val_windows(1, READ_LEN)
    runs = {}
    for name, changes in VARIANTS.items():
        cfg = shakespeare_config(max_seq_len=CONTEXT, **changes)
        r = train_lm(cfg, steps, lr, seed=exp.seed, batch_size=batch, eval_batches=exp.pick(20, 3, 1))
        model = r.pop("model").eval()
        curve = loss_per_position(model, x, y)
        long_model = reread(model, max_seq_len=READ_LEN)  # RoPE tables for 1,024 positions; same weights
        cache = long_model.new_cache(READ_LEN, static=False)  # a growing cache holds exactly what it keeps
        with torch.no_grad():
            long_model(text, cache=cache)
        per_position = kv_cache_bytes_per_token(cfg, 4) // cfg.n_layers  # fp32 bytes of one position, one layer
        runs[name] = {
            **r,
            "params": model.num_params(),
            "loss_per_position": curve.tolist(),
            "loss_by_span": span_means(curve, SPANS),
            "mean_loss": float(curve.mean()),
            "windowed_layers": [i for i in range(cfg.n_layers) if cfg.layer_window(i)],
            "kv_bytes_per_token_fp32": kv_cache_bytes_per_token(cfg, 4),
            "kv_bytes_fp32": {c: kv_cache_bytes(cfg, c, 4) for c in CONTEXTS},
            "real_cache_bytes": cache.nbytes(),
            "expected_held_bytes": held_positions(cfg, READ_LEN) * per_position,
            "summary_bytes_at_read": kv_cache_bytes(cfg, READ_LEN, 4),
        }
        s = runs[name]["loss_by_span"]
        exp.log(f"{name}: val {r['final_val_loss']:.4f}, " + ", ".join(f"{k}: {v:.3f}" for k, v in s.items())
                + f"; cache after {READ_LEN}: {cache.nbytes():,} B")
    exp.metric("runs", runs)
    exp.table("by_position", ["variant", "params", *(f"loss at {s}" for s in SPANS), "mean over 1-256",
                              "final val loss (trainer)", "train tokens / s"],
              [[k, r["params"], *r["loss_by_span"].values(), r["mean_loss"], r["final_val_loss"], r["tokens_per_s"]]
               for k, r in runs.items()],
              caption=f"{steps} steps of {batch} x {CONTEXT} characters at lr {lr:g}, one seed; loss in nats per "
                      f"character at each span of positions over {n_windows} held-out windows of {CONTEXT}. "
                      "Training speed is one run on a shared CPU (timing belongs to exp5_decode_speed).")
    exp.table("cache", ["variant", "KV bytes / token (fp32, all layers)",
                        *(f"cache of {c:,} tokens (fp32)" for c in CONTEXTS),
                        f"real KVCache after {READ_LEN:,} tokens"],
              [[k, r["kv_bytes_per_token_fp32"], *r["kv_bytes_fp32"].values(), r["real_cache_bytes"]]
               for k, r in runs.items()],
              caption="From `kv_cache_bytes` (a windowed layer holds at most its window) and, last column, "
                      "`KVCache.nbytes()` of a real growing cache after one forward pass over held-out text (a "
                      "windowed layer keeps window - 1 positions between steps).")

    full, win, hyb = (runs[k] for k in VARIANTS)
    exp.finding(f"At positions {EARLY}, where every variant sees the same characters, the window's loss is within "
                "0.03 nats of full attention's", abs(win["loss_by_span"][EARLY] - full["loss_by_span"][EARLY]) < 0.03,
                full=full["loss_by_span"][EARLY], window=win["loss_by_span"][EARLY])
    exp.finding(f"At positions {LATE}, full attention's loss is lower than the window's (it sees up to 255 "
                f"characters instead of {WINDOW})", full["loss_by_span"][LATE] < win["loss_by_span"][LATE],
                full=full["loss_by_span"][LATE], window=win["loss_by_span"][LATE])
    exp.finding(f"The window costs more at {LATE} than at {EARLY} (the gap to full attention grows with position)",
                win["loss_by_span"][LATE] - full["loss_by_span"][LATE]
                > win["loss_by_span"][EARLY] - full["loss_by_span"][EARLY],
                gap_early=win["loss_by_span"][EARLY] - full["loss_by_span"][EARLY],
                gap_late=win["loss_by_span"][LATE] - full["loss_by_span"][LATE])
    exp.finding(f"Two global layers out of four recover part of the gap at {LATE} (hybrid below window-only)",
                hyb["loss_by_span"][LATE] < win["loss_by_span"][LATE], hybrid=hyb["loss_by_span"][LATE],
                window=win["loss_by_span"][LATE])
    exp.finding("Over all 256 positions, full attention ends with the lowest mean loss of the three",
                full["mean_loss"] < min(win["mean_loss"], hyb["mean_loss"]),
                **{k: r["mean_loss"] for k, r in runs.items()})
    big = CONTEXTS[-1]
    exp.finding(f"At {big:,} tokens the windowed model's cache is {big // WINDOW}x smaller than full attention's "
                f"({big:,} / {WINDOW}), and the hybrid's about half of full's",
                full["kv_bytes_fp32"][big] == big // WINDOW * win["kv_bytes_fp32"][big]
                and abs(hyb["kv_bytes_fp32"][big] / full["kv_bytes_fp32"][big] - 0.5) < 0.01,
                full=full["kv_bytes_fp32"][big], window=win["kv_bytes_fp32"][big], hybrid=hyb["kv_bytes_fp32"][big])
    exp.finding(f"A real KVCache after {READ_LEN:,} tokens holds exactly the predicted bytes: every position of a "
                "global layer, window - 1 of a windowed one",
                all(r["real_cache_bytes"] == r["expected_held_bytes"] for r in runs.values()),
                **{k: r["real_cache_bytes"] for k, r in runs.items()})

    fig, axes = figure(2, 1, width=5.6, height=3.9)
    ax = axes[0][0]
    k = 8
    for i, (name, r) in enumerate(runs.items()):
        c = torch.tensor(r["loss_per_position"])
        smooth = torch.nn.functional.avg_pool1d(c[None, None], k, stride=k)[0, 0]
        ax.plot([k * j + k / 2 for j in range(len(smooth))], smooth.tolist(), color=f"C{i}", label=name)
    ax.axvline(WINDOW, color="gray", ls="--", lw=1, label=f"window ({WINDOW})")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="position in the window (log scale)", ylabel=f"loss (nats / char, mean of {k} positions)",
           title="loss by position, same training budget")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    for i, (name, r) in enumerate(runs.items()):
        ax.plot(CONTEXTS, [r["kv_bytes_fp32"][c] / 2**20 for c in CONTEXTS], "o-", color=f"C{i}", label=name)
        ax.plot([READ_LEN], [r["real_cache_bytes"] / 2**20], "x", color=f"C{i}", markersize=9)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="tokens in the cache (log scale)", ylabel="KV cache of one sequence (MiB, fp32)",
           title="cache size (x: a real KVCache)")
    ax.legend(fontsize=8)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
