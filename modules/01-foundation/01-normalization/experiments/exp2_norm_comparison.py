"""Which normalization trains a causal LM best, and over which learning rates?

NoNorm, Post-LN (LayerNorm, the 2017 Transformer), Pre-LN + LayerNorm (GPT-2) and Pre-LN + RMSNorm
(Llama, MiniMind) — the same 4-layer, 128-wide model on TinyShakespeare characters, each trained
with the same budget at every learning rate of a small sweep. We report the final validation loss,
the step where a run diverged (NaN/inf, or no better than a uniform guess), and the range of
learning rates that train. The reference tutorial claims NoNorm goes NaN at ~500 steps and final
losses of 3.5 (NoNorm) / 2.8 (Post-LN) / 2.7 (Pre-LN).
"""

import math

from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_config, train_lm
from mmlab.lab.plots import figure

VARIANTS = {
    "NoNorm": {"norm": "none", "norm_position": "pre"},
    "Post-LN (LayerNorm)": {"norm": "layernorm", "norm_position": "post"},
    "Pre-LN + LayerNorm": {"norm": "layernorm", "norm_position": "pre"},
    "Pre-LN + RMSNorm": {"norm": "rmsnorm", "norm_position": "pre"},
}


def main(exp: Experiment) -> None:
    lrs = exp.pick(full=[1e-3, 3e-3, 1e-2, 3e-2], quick=[3e-3, 3e-2], smoke=[3e-3])
    steps = exp.pick(full=500, quick=40, smoke=3)
    exp.set_config(variants=VARIANTS, learning_rates=lrs, steps=steps, batch_size=12, block_size=64,
                   schedule="warmup 10% then cosine to lr/10", model="shakespeare-char")
    runs = {}
    for name, switches in VARIANTS.items():
        for lr in lrs:
            r = train_lm(shakespeare_config(**switches), steps, lr, seed=exp.seed, eval_batches=exp.pick(40, 5, 2))
            runs[(name, lr)] = r
            exp.log(f"{name} lr {lr:g}: val {r['final_val_loss']:.4f} diverged at {r['diverged_at']}")
    uniform = math.log(shakespeare_config().vocab_size)
    exp.metric("runs", {f"{n} @ {lr:g}": {k: v for k, v in r.items() if k != "model"} for (n, lr), r in runs.items()})

    rows, best = [], {}
    for name in VARIANTS:
        losses = {lr: runs[(name, lr)]["final_val_loss"] for lr in lrs}
        trained = [lr for lr in lrs if runs[(name, lr)]["diverged_at"] is None]
        best[name] = min((v for v in losses.values() if v == v), default=float("nan"))
        diverged = [f"{lr:g}@{runs[(name, lr)]['diverged_at']}" for lr in lrs if runs[(name, lr)]["diverged_at"]]
        rows.append([name, *[losses[lr] for lr in lrs], best[name],
                     f"{min(trained):g} to {max(trained):g}" if trained else "none", ", ".join(diverged) or "none"])
    exp.table("final", ["variant", *[f"val loss @ lr {lr:g}" for lr in lrs], "best", "lrs that train",
                        "diverged (lr@step)"], rows,
              caption=f"{steps} steps, batch 12 x 64 characters; uniform guess = ln(65) = {uniform:.3f}.")

    def n_trained(name):
        return sum(runs[(name, lr)]["diverged_at"] is None for lr in lrs)

    exp.finding("Pre-LN + RMSNorm reaches a lower best val loss than NoNorm",
                best["Pre-LN + RMSNorm"] < best["NoNorm"], rmsnorm=best["Pre-LN + RMSNorm"], nonorm=best["NoNorm"])
    exp.finding("Pre-LN + RMSNorm reaches a lower best val loss than Post-LN",
                best["Pre-LN + RMSNorm"] < best["Post-LN (LayerNorm)"], rmsnorm=best["Pre-LN + RMSNorm"],
                post_ln=best["Post-LN (LayerNorm)"])
    exp.finding("RMSNorm and LayerNorm (both Pre-LN) end within 0.05 of each other",
                abs(best["Pre-LN + RMSNorm"] - best["Pre-LN + LayerNorm"]) < 0.05,
                rmsnorm=best["Pre-LN + RMSNorm"], layernorm=best["Pre-LN + LayerNorm"])
    exp.finding("NoNorm diverges at some learning rate of the sweep",
                n_trained("NoNorm") < len(lrs), lrs_that_train=n_trained("NoNorm"), of=len(lrs))
    exp.finding("Pre-LN + RMSNorm trains at least as many learning rates as NoNorm",
                n_trained("Pre-LN + RMSNorm") >= n_trained("NoNorm"),
                rmsnorm=n_trained("Pre-LN + RMSNorm"), nonorm=n_trained("NoNorm"))
    nan_steps = [runs[("NoNorm", lr)]["diverged_at"] for lr in lrs if runs[("NoNorm", lr)]["diverged_at"]]
    exp.finding("The reference's 'NoNorm goes NaN at ~500 steps' holds (a NoNorm run diverges at step 250-750)",
                any(250 <= s <= 750 for s in nan_steps), divergence_steps=nan_steps or "none")
    exp.finding("The reference's final losses 3.5 / 2.8 / 2.7 hold within 0.2 (NoNorm / Post-LN / Pre-LN best)",
                abs(best["NoNorm"] - 3.5) < 0.2 and abs(best["Post-LN (LayerNorm)"] - 2.8) < 0.2
                and abs(best["Pre-LN + LayerNorm"] - 2.7) < 0.2,
                nonorm=best["NoNorm"], post_ln=best["Post-LN (LayerNorm)"], pre_ln=best["Pre-LN + LayerNorm"])

    fig, axes = figure(ncols=2)
    for name in VARIANTS:
        ys = [runs[(name, lr)]["final_val_loss"] for lr in lrs]
        axes[0][0].semilogx(lrs, [y if y == y else float("nan") for y in ys], "o-", label=name)
        best_lr = min(lrs, key=lambda lr: runs[(name, lr)]["final_val_loss"]
                      if runs[(name, lr)]["final_val_loss"] == runs[(name, lr)]["final_val_loss"] else 1e9)
        curve = runs[(name, best_lr)]["val_curve"]
        if curve:
            axes[0][1].plot([s for s, _ in curve], [v for _, v in curve], "o-", markersize=3,
                            label=f"{name} (lr {best_lr:g})")
    axes[0][0].axhline(uniform, color="gray", linestyle=":", label="uniform guess")
    axes[0][0].set(xlabel="peak learning rate", ylabel="final val loss (nats / char)",
                   title=f"learning-rate sweep, {steps} steps (missing point = diverged)")
    axes[0][1].set(xlabel="step", ylabel="val loss (nats / char)", title="val loss at each variant's best lr")
    axes[0][0].legend()
    axes[0][1].legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
