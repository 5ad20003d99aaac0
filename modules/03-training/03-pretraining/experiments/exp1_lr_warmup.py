"""Which learning rate, and does warmup matter? A sweep of AdamW's peak learning rate, and the high
rates again without warmup.

Every run: the same model, data order and number of steps (cosine decay to lr/10, gradient clipping at
1.0); only the peak learning rate and the warmup change. Warmup ramps the rate up linearly over the
first 10% of steps. A run *diverges* when its loss becomes NaN/inf or ends no better than a uniform
guess over the 65 characters.
"""

import math

from _common import config, curve_label, run

from mmlab.lab import Experiment
from mmlab.lab.plots import figure


def main(exp: Experiment) -> None:
    lrs = exp.pick(full=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1], quick=[3e-4, 3e-3, 3e-2], smoke=[1e-3, 1e-1])
    no_warmup_lrs = exp.pick(full=[3e-3, 3e-2, 1e-1], quick=[3e-3, 3e-2], smoke=[1e-3, 1e-1])
    steps = exp.pick(full=300, quick=60, smoke=3)
    warmup = steps // 10
    eb = exp.pick(20, 6, 2)
    exp.set_config(steps=steps, warmup=warmup, learning_rates=lrs, no_warmup_learning_rates=no_warmup_lrs,
                   schedule="cosine to lr/10", grad_clip=1.0, optimizer="AdamW (0.9, 0.99), weight decay 0.1")
    with_w, without_w = {}, {}
    for lr in lrs:
        with_w[lr] = run(steps, lr, seed=exp.seed, eval_batches=eb, warmup=warmup)
        exp.log(f"lr {lr:g}, warmup {warmup}: {curve_label(with_w[lr])}")
    for lr in no_warmup_lrs:
        without_w[lr] = run(steps, lr, seed=exp.seed, eval_batches=eb, warmup=0)
        exp.log(f"lr {lr:g}, no warmup: {curve_label(without_w[lr])}")

    def val(r):
        return r["final_val_loss"] if r["diverged_at"] is None else float("inf")

    def late_max(r):  # the worst training loss after the first 10% of steps
        late = [loss for s, loss in r["train_curve"] if s > warmup]
        return max(late) if late else float("nan")

    def early_max(r):  # the worst training loss in the first 10% of steps: an early spike shows here
        early = [loss for s, loss in r["train_curve"] if s <= max(warmup, 1)]
        return max(early) if early else float("nan")

    exp.metric("val_loss", {lr: r["final_val_loss"] for lr, r in with_w.items()})
    exp.metric("val_loss_no_warmup", {lr: r["final_val_loss"] for lr, r in without_w.items()})
    exp.metric("diverged_at", {**{f"{lr:g}": r["diverged_at"] for lr, r in with_w.items()},
                               **{f"{lr:g} no warmup": r["diverged_at"] for lr, r in without_w.items()}})
    rows = []
    for lr in lrs:
        r, n = with_w[lr], without_w.get(lr)
        rows.append([f"{lr:g}", r["final_val_loss"], early_max(r), late_max(r), n["final_val_loss"] if n else None,
                     early_max(n) if n else None, late_max(n) if n else None])
    exp.table("sweep", ["peak lr", "val loss (warmup)", "peak train loss, first 10%", "peak train loss, after",
                        "val loss (no warmup)", "peak train loss, first 10% (no warmup)",
                        "peak train loss, after (no warmup)"], rows,
              caption=f"{steps} steps of {16 * 128:,} tokens, warmup {warmup} steps where used, one seed. "
                      "'nan' marks a run that diverged.")
    best = min(lrs, key=lambda lr: val(with_w[lr]))
    exp.metric("best_lr", best)
    exp.finding("The best learning rate is neither the smallest nor the largest tried (the curve is U-shaped)",
                best not in (lrs[0], lrs[-1]), best=best, smallest=lrs[0], largest=lrs[-1])
    exp.finding("Too small is slow: the smallest rate ends at least 0.2 nats above the best",
                val(with_w[lrs[0]]) - val(with_w[best]) >= 0.2, smallest=val(with_w[lrs[0]]), best=val(with_w[best]))
    top = no_warmup_lrs[-1]
    exp.finding(f"At the highest rate ({top:g}) warmup helps: the run with warmup ends lower",
                val(with_w[top]) < val(without_w[top]), warmup=with_w[top]["final_val_loss"],
                no_warmup=without_w[top]["final_val_loss"])
    uniform = math.log(config().vocab_size)
    exp.finding(f"Without warmup, the highest rate ({top:g}) makes the loss spike above a uniform guess (ln "
                f"{config().vocab_size}) in the first 10% of steps; with warmup it stays below",
                early_max(without_w[top]) > uniform > early_max(with_w[top]), uniform_guess=uniform,
                peak_no_warmup=early_max(without_w[top]), peak_warmup=early_max(with_w[top]))
    low = no_warmup_lrs[0]
    gaps = {f"{lr:g}": val(without_w[lr]) - val(with_w[lr]) for lr in no_warmup_lrs}
    exp.finding("Warmup matters more at a higher rate: its benefit at the highest rate exceeds that at the lowest",
                gaps[f"{top:g}"] > gaps[f"{low:g}"], **{f"gap_{k}": v for k, v in gaps.items()})

    fig, axes = figure(2)
    ax = axes[0][0]
    ax.plot(lrs, [val(with_w[lr]) if val(with_w[lr]) != float("inf") else float("nan") for lr in lrs], "o-",
            label="with warmup")
    ax.plot(no_warmup_lrs, [val(without_w[lr]) if val(without_w[lr]) != float("inf") else float("nan")
                            for lr in no_warmup_lrs], "s--", label="no warmup")
    ax.set_xscale("log")
    ax.set(xlabel="peak learning rate (log scale)", ylabel="final val loss (nats/char)",
           title=f"learning-rate sweep, {steps} steps")
    ax.legend()
    ax = axes[0][1]
    for lr in no_warmup_lrs:
        for r, style, name in ((with_w[lr], "-", "warmup"), (without_w[lr], "--", "no warmup")):
            s, loss = zip(*r["train_curve"], strict=True) if r["train_curve"] else ((), ())
            ax.plot(s, loss, style, label=f"lr {lr:g}, {name}")
    ax.set(xlabel="optimizer step", ylabel="train loss (nats/char)", title="training loss, with and without warmup")
    ax.legend(fontsize=8)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
