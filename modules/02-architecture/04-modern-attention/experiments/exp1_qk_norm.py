"""Does QK-norm keep attention logits bounded, and the training stable, as the learning rate rises?

The same 4-layer, 128-wide model (4 heads of 32) on TinyShakespeare, with and without ``qk_norm`` (RMSNorm over
head_dim on every query and key head, before RoPE: Qwen3, OLMo 2, Gemma 3), trained at learning rates from 1e-3
to 0.3 (AdamW, warmup then cosine decay, gradient clipping at 1.0; same seed and data order everywhere).

What we measure, at every training step of every run (``_common.LogitProbe``): the largest attention logit
q.k / sqrt(d) over all the query-key pairs the causal mask allows, in every layer, head and sequence of the
batch, recomputed from each attention layer's input exactly as the layer computes it (the experiment checks
that the softmax of these logits equals the model's own attention weights), and the mean entropy of the
attention rows. Then the final val loss, whether the loop hit NaN/inf, and the largest jump of the training
loss above its lowest value so far (a loss spike). A model that only learned the letter frequencies would score
the unigram entropy; the table shows how far above the best run of the sweep each run ends.
"""

import math

import torch
from _common import LogitProbe, attention_logits, finite, unigram_entropy, val_windows

from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_config, train_lm
from mmlab.lab.plots import figure

VARIANTS = {"no QK-norm": False, "QK-norm": True}
HIGH_LR = 1e-2  # "high" learning rates for the findings: this and above
SPIKE = 0.5  # nats: a logged training loss this far above the lowest one before it is a loss spike
NEAR_BEST = 0.1  # nats: a learning rate "works" for a variant when it ends within this of the variant's best


def spike(curve: list[tuple[int, float]], after: int) -> float:
    """The largest rise of the training loss above its running minimum, after step ``after`` (nats)."""
    low, worst = math.inf, 0.0
    for step, loss in curve:
        if not finite(loss):
            return math.inf
        if step > after:
            worst = max(worst, loss - low)
        low = min(low, loss)
    return worst


def probe_matches_model(model) -> float:
    """Max |softmax(probe logits) - the model's attention weights| over every layer, on held-out text."""
    x, _ = val_windows(2, model.cfg.max_seq_len)
    diffs = []

    def hook(module, args, output):
        diffs.append((torch.softmax(attention_logits(module, args[0], args[1]), -1) - output[1]).abs().max().item())

    handles = [b.attn.register_forward_hook(hook) for b in model.blocks]
    with torch.no_grad():
        model.eval()(x, need_weights=True)
    for h in handles:
        h.remove()
    return max(diffs)


def main(exp: Experiment) -> None:
    lrs = exp.pick(full=[1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1], quick=[1e-3, 3e-2, 3e-1], smoke=[3e-2])
    steps = exp.pick(full=500, quick=80, smoke=2)
    warmup = min(100, steps // 10)
    unigram = unigram_entropy()
    exp.set_config(variants=VARIANTS, learning_rates=lrs, steps=steps, warmup=warmup, seeds=[exp.seed],
                   model="shakespeare-char (4 layers x 128, 4 heads of 32, RoPE theta 1e4)", batch="12 x 64",
                   optimizer="AdamW, cosine to lr/10, grad_clip 1.0", threads=torch.get_num_threads(),
                   measured="max over allowed pairs of q.k/sqrt(d), every training step, every layer (probe)",
                   spike_nats=SPIKE, near_best_nats=NEAR_BEST, unigram_entropy=unigram)
    runs: dict[str, dict[str, dict]] = {name: {} for name in VARIANTS}
    probe_diff = None
    for name, qk in VARIANTS.items():
        cfg = shakespeare_config(qk_norm=qk)
        for lr in lrs:
            with LogitProbe() as probe:
                r = train_lm(cfg, steps, lr, seed=exp.seed, eval_batches=exp.pick(20, 4, 1), warmup=warmup)
            model = r.pop("model")
            if probe_diff is None:
                probe_diff = probe_matches_model(model)
            maxes, ents = probe.per_step(cfg.n_layers)
            tail = max(1, len(maxes) // 10)
            every = max(1, len(maxes) // 100)
            run = {
                "final_val_loss": r["final_val_loss"],
                "diverged_at": r["diverged_at"],
                "nan": r["diverged_at"] is not None and r["diverged_at"] < steps,
                "max_logit_final": sum(maxes[-tail:]) / tail,  # mean of the last 10% of steps
                "max_logit_peak": max(maxes) if maxes else float("nan"),
                "entropy_final": sum(ents[-tail:]) / tail,
                "spike": spike(r["train_curve"], warmup),
                "max_logit_curve": [(i + 1, m) for i, m in enumerate(maxes)][::every],
                "entropy_curve": [(i + 1, e) for i, e in enumerate(ents)][::every],
                "val_curve": r["val_curve"],
                "train_curve": r["train_curve"],
                "params": model.num_params(),
            }
            runs[name][f"{lr:g}"] = run
            exp.log(f"{name} lr {lr:g}: val {run['final_val_loss']:.4f}, max logit {run['max_logit_final']:.1f} "
                    f"(peak {run['max_logit_peak']:.1f}), entropy {run['entropy_final']:.2f}, spike {run['spike']:.2f}")
    exp.metric("runs", runs)
    exp.metric("probe_max_abs_diff", probe_diff)
    best = min(r["final_val_loss"] for v in runs.values() for r in v.values() if finite(r["final_val_loss"]))
    rows = []
    for lr in lrs:
        a, b = runs["no QK-norm"][f"{lr:g}"], runs["QK-norm"][f"{lr:g}"]
        rows.append([f"{lr:g}", a["final_val_loss"], b["final_val_loss"], a["max_logit_final"], b["max_logit_final"],
                     a["entropy_final"], b["entropy_final"], a["spike"], b["spike"]])
    exp.table("sweep", ["learning rate", "val loss, no QK-norm", "val loss, QK-norm", "max logit, no QK-norm",
                        "max logit, QK-norm", "attention entropy, no QK-norm", "attention entropy, QK-norm",
                        "largest loss spike, no QK-norm", "largest loss spike, QK-norm"], rows,
              caption=f"{steps} steps each, one seed. Max logit: the largest q.k/sqrt(d) over every allowed pair, "
                      "layer, head and sequence of a training batch, averaged over the last 10% of steps. Entropy: "
                      "the mean entropy of the attention rows (nats) over the same steps. Spike: the largest rise "
                      "of the logged training loss above its lowest value so far, after warmup (nats). A model "
                      f"that learned only the letter frequencies scores {unigram:.3f}.")
    exp.table("params", ["variant", "parameters"],
              [[name, next(iter(v.values()))["params"]] for name, v in runs.items()],
              caption="QK-norm adds two gain vectors of head_dim per layer.")

    none, qk = runs["no QK-norm"], runs["QK-norm"]
    lo, hi = f"{lrs[0]:g}", f"{lrs[-1]:g}"
    high = [f"{lr:g}" for lr in lrs if lr >= HIGH_LR] or [hi]
    exp.finding("The probe's logits reproduce the model's attention weights (softmax of them, max difference "
                "below 1e-5)", probe_diff is not None and probe_diff < 1e-5, max_abs_diff=probe_diff)
    exp.finding("Without QK-norm the largest attention logit grows with the learning rate: at the highest rate it "
                "is more than 10x its value at the lowest",
                none[hi]["max_logit_final"] > 10 * none[lo]["max_logit_final"],
                lowest_lr=none[lo]["max_logit_final"], highest_lr=none[hi]["max_logit_final"])
    exp.finding("With QK-norm the largest logit is lower than without it at every high learning rate (>= 1e-2)",
                all(qk[k]["max_logit_final"] < none[k]["max_logit_final"] for k in high),
                **{f"lr {k}": f"{qk[k]['max_logit_final']:.3g} vs {none[k]['max_logit_final']:.3g}" for k in high})
    exp.finding("Without QK-norm the attention rows get sharper (lower entropy) at the highest learning rate than "
                "at the lowest", none[hi]["entropy_final"] < none[lo]["entropy_final"],
                lowest_lr=none[lo]["entropy_final"], highest_lr=none[hi]["entropy_final"])
    exp.finding("QK-norm ends with a lower val loss than no QK-norm at every high learning rate (>= 1e-2)",
                all(qk[k]["final_val_loss"] < none[k]["final_val_loss"] for k in high),
                **{f"lr {k}": f"{qk[k]['final_val_loss']:.4g} vs {none[k]['final_val_loss']:.4g}" for k in high})
    best_none = min(none, key=lambda k: none[k]["final_val_loss"] if finite(none[k]["final_val_loss"]) else math.inf)
    best_qk = min(qk, key=lambda k: qk[k]["final_val_loss"] if finite(qk[k]["final_val_loss"]) else math.inf)
    exp.finding("At each variant's own best learning rate, QK-norm's val loss is more than 0.02 nats below no "
                "QK-norm's (it helps even where the baseline is tuned)",
                qk[best_qk]["final_val_loss"] < none[best_none]["final_val_loss"] - 0.02,
                no_qk_norm=none[best_none]["final_val_loss"], no_qk_norm_lr=best_none,
                qk_norm=qk[best_qk]["final_val_loss"], qk_norm_lr=best_qk)

    def works(v: dict, k: str, ref: float) -> bool:
        return finite(v[k]["final_val_loss"]) and v[k]["final_val_loss"] <= ref + NEAR_BEST

    top_none = max((float(k) for k in none if works(none, k, none[best_none]["final_val_loss"])), default=0.0)
    top_qk = max((float(k) for k in qk if works(qk, k, qk[best_qk]["final_val_loss"])), default=0.0)
    exp.finding("QK-norm widens the range of usable learning rates: its highest rate within 0.1 nats of its own "
                "best is higher than the baseline's", top_qk > top_none, no_qk_norm=top_none, qk_norm=top_qk)
    exp.finding("No run hit NaN/inf: at these scales instability shows as a worse loss, not as a crash",
                not any(r["nan"] for v in runs.values() for r in v.values()),
                nan_runs=[f"{n} lr {k}" for n, v in runs.items() for k, r in v.items() if r["nan"]] or "none")
    exp.finding(f"The baseline has a loss spike (> {SPIKE} nats above its lowest loss so far) at some learning rate; "
                "QK-norm at none", any(r["spike"] > SPIKE for r in none.values())
                and not any(r["spike"] > SPIKE for r in qk.values()),
                no_qk_norm=max(r["spike"] for r in none.values()), qk_norm=max(r["spike"] for r in qk.values()))
    exp.metric("best_val_loss", best)

    fig, axes = figure(3, 1, width=4.6, height=3.8)
    ax = axes[0][0]
    for i, (name, v) in enumerate(runs.items()):
        ax.plot([float(k) for k in v], [r["final_val_loss"] for r in v.values()], "o-", color=f"C{i}", label=name)
    ax.axhline(unigram, color="gray", ls=":", lw=1, label="letter frequencies only")
    ax.set_xscale("log")
    ax.set(xlabel="peak learning rate", ylabel="final val loss (nats / char)", title="loss vs learning rate")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    for i, (name, v) in enumerate(runs.items()):
        ax.plot([float(k) for k in v], [r["max_logit_final"] for r in v.values()], "o-", color=f"C{i}", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="peak learning rate", ylabel="max attention logit q·k/√d (last 10% of steps)",
           title="attention-logit growth")
    ax.legend(fontsize=8)
    ax = axes[0][2]
    for i, (name, v) in enumerate(runs.items()):
        for k, r in v.items():
            if float(k) in (lrs[0], lrs[-1]) or len(lrs) == 1:
                c = r["max_logit_curve"]
                ax.plot([s for s, _ in c], [m for _, m in c], color=f"C{i}", ls="-" if float(k) == lrs[-1] else ":",
                        label=f"{name}, lr {k}")
    ax.set_yscale("log")
    ax.set(xlabel="training step", ylabel="max attention logit q·k/√d", title="over training")
    ax.legend(fontsize=7)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
