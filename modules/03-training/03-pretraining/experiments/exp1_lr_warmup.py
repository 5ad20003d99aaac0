"""How high can the learning rate go, and what does warmup buy? A sweep of the peak learning rate with
and without 100 warmup steps.

The shakespeare-char model (4 layers x 128, AdamW, cosine decay to lr/10, gradient clipping at 1.0)
trains for the same steps at each peak learning rate, once with a linear warmup over the first 100
steps and once starting at the peak. A run whose loss becomes NaN/inf, or ends no better than a
uniform guess over the 65 characters, counts as diverged.
"""

import math

from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_config, train_lm
from mmlab.lab.plots import figure

LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]


def main(exp: Experiment) -> None:
    lrs = exp.pick(full=LRS, quick=[3e-4, 3e-3, 3e-2], smoke=[1e-3, 3e-2])
    steps = exp.pick(full=500, quick=60, smoke=2)
    warmups = {"warmup 100": exp.pick(100, 10, 1), "no warmup": 0}
    exp.set_config(lrs=lrs, steps=steps, warmups=warmups, model="shakespeare-char (4 layers x 128)", batch="12 x 64")
    runs: dict[str, dict[str, dict]] = {w: {} for w in warmups}
    for w, warmup in warmups.items():
        for lr in lrs:
            r = train_lm(shakespeare_config(), steps, lr, seed=exp.seed, warmup=warmup, eval_batches=exp.pick(40, 5, 2))
            r.pop("model")
            runs[w][f"{lr:g}"] = {"final_val_loss": r["final_val_loss"], "diverged_at": r["diverged_at"],
                                  "val_curve": r["val_curve"]}
            exp.log(f"{w}, lr {lr:g}: val {r['final_val_loss']:.4f}" + (
                f" (diverged at step {r['diverged_at']})" if r["diverged_at"] else ""))
    exp.metric("runs", runs)

    def val(w: str, lr: float) -> float:
        v = runs[w][f"{lr:g}"]["final_val_loss"]
        return v if math.isfinite(v) and runs[w][f"{lr:g}"]["diverged_at"] is None else math.inf

    exp.table("sweep", ["peak lr", *[f"val loss, {w}" for w in warmups]],
              [[f"{lr:g}", *[runs[w][f"{lr:g}"]["final_val_loss"] if val(w, lr) < math.inf else "diverged"
                             for w in warmups]] for lr in lrs],
              caption=f"{steps} steps, cosine to lr/10, one seed; val loss in nats per character.")
    best = {w: min(lrs, key=lambda lr, w=w: val(w, lr)) for w in warmups}
    exp.metric("best_lr", {w: best[w] for w in warmups})
    w0, w1 = "warmup 100", "no warmup"
    exp.finding("Too low and too high both lose: the best learning rate (with warmup) is neither end of the sweep",
                best[w0] not in (lrs[0], lrs[-1]), best=best[w0], lowest=lrs[0], highest=lrs[-1])
    exp.finding("At the highest learning rate, warmup ends with a lower val loss than no warmup",
                val(w0, lrs[-1]) < val(w1, lrs[-1]), lr=lrs[-1], warmup=val(w0, lrs[-1]), no_warmup=val(w1, lrs[-1]))
    exp.finding("At the best learning rate, warmup changes the final val loss by less than 0.02",
                abs(val(w0, best[w0]) - val(w1, best[w0])) < 0.02, lr=best[w0], warmup=val(w0, best[w0]),
                no_warmup=val(w1, best[w0]))

    fig, axes = figure()
    ax = axes[0][0]
    for i, w in enumerate(warmups):
        xs = [lr for lr in lrs if val(w, lr) < math.inf]
        ax.plot(xs, [val(w, lr) for lr in xs], "o-", color=f"C{i}", label=w)
        for lr in lrs:
            if val(w, lr) == math.inf:
                ax.axvline(lr, color=f"C{i}", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set(xlabel="peak learning rate (log scale)", ylabel="final val loss (nats / char)",
           title=f"learning-rate sweep, {steps} steps (dotted: diverged)")
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
