"""AdamW or SGD? Each at its own best learning rate.

Adam keeps a running mean of each parameter's gradient and of its square, and divides one by the
square root of the other: every parameter takes steps of about the same size, whatever the scale of
its gradient. SGD with momentum takes one global step size. We sweep the learning rate of each (SGD
needs far larger rates) on the same model, data and steps, and compare the best of each.
Muon (orthogonalised momentum for matrices) is not implemented in mmlab yet.
"""

import math

from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_config, train_lm
from mmlab.lab.plots import figure

SWEEPS = {"adamw": [5e-4, 2e-3, 5e-3], "sgd": [0.03, 0.1, 0.3, 1.0]}


def main(exp: Experiment) -> None:
    sweeps = exp.pick(full=SWEEPS, quick={"adamw": [2e-3], "sgd": [0.3]}, smoke={"adamw": [2e-3], "sgd": [0.3]})
    steps = exp.pick(full=600, quick=80, smoke=2)
    exp.set_config(sweeps=sweeps, steps=steps, sgd_momentum=0.9, nesterov=True, weight_decay=0.1,
                   model="shakespeare-char (4 layers x 128)", batch="12 x 64")
    runs: dict[str, dict[str, dict]] = {o: {} for o in sweeps}
    for opt, lrs in sweeps.items():
        for lr in lrs:
            r = train_lm(shakespeare_config(), steps, lr, seed=exp.seed, eval_batches=exp.pick(40, 5, 2), optimizer=opt)
            r.pop("model")
            ok = r["diverged_at"] is None and math.isfinite(r["final_val_loss"])
            runs[opt][f"{lr:g}"] = {"final_val_loss": r["final_val_loss"] if ok else math.inf,
                                    "diverged_at": r["diverged_at"], "val_curve": r["val_curve"]}
            exp.log(f"{opt} lr {lr:g}: val {r['final_val_loss']:.4f}")
    exp.metric("runs", runs)
    best = {o: min(runs[o], key=lambda k, o=o: runs[o][k]["final_val_loss"]) for o in sweeps}
    exp.table("sweep", ["optimizer", "learning rate", "final val loss"],
              [[o, k, r["final_val_loss"] if math.isfinite(r["final_val_loss"]) else "diverged"]
               for o in sweeps for k, r in runs[o].items()],
              caption=f"{steps} steps, cosine to lr/10, 10% warmup, one seed; nats per character.")
    va, vs = runs["adamw"][best["adamw"]]["final_val_loss"], runs["sgd"][best["sgd"]]["final_val_loss"]
    exp.finding("AdamW at its best learning rate beats SGD at its best by more than 0.1 nats", vs - va > 0.1,
                adamw=va, adamw_lr=best["adamw"], sgd=vs, sgd_lr=best["sgd"])
    exp.finding("SGD's best learning rate is at least 10x AdamW's", float(best["sgd"]) >= 10 * float(best["adamw"]),
                adamw_lr=best["adamw"], sgd_lr=best["sgd"])

    fig, axes = figure()
    ax = axes[0][0]
    for i, o in enumerate(sweeps):
        xs, ys = zip(*runs[o][best[o]]["val_curve"], strict=True)
        ax.plot(xs, ys, "o-", ms=3, color=f"C{i}", label=f"{o}, lr {best[o]} (its best)")
    ax.set(xlabel="step", ylabel="val loss (nats / char)", title="AdamW vs SGD with momentum")
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
