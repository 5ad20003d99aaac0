"""Constant, cosine or warmup-stable-decay? The same peak rate and steps under three schedules — and
WSD's selling point: a model for a shorter budget by branching a short decay off the stable phase.

Every run: AdamW at peak lr 3e-3 with the same warmup (10% of the steps), decaying to lr/10 where the
schedule decays. Cosine decays from the end of warmup; WSD holds the peak and decays linearly over the
last 20% of the steps; constant never decays. The WSD branch is a run of half the steps: until its
decay it is step for step the long WSD run (same seed, data order and rate), so it is exactly what
branching a decay off the long run at that point gives.
"""

from _common import run

from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.train.config import TrainConfig
from mmlab.train.optim import lr_at

LR = 3e-3


def main(exp: Experiment) -> None:
    steps = exp.pick(full=600, quick=80, smoke=4)
    half = steps // 2
    warmup = steps // 10
    eb = exp.pick(20, 6, 2)
    evals = exp.pick(20, 10, 4)  # the evaluation interval divides the decay's start (80% of the steps)
    exp.set_config(steps=steps, peak_lr=LR, min_lr=LR / 10, warmup=warmup, wsd_decay_fraction=0.2,
                   branch_steps=half, evaluations_per_run=evals)
    plans = {  # name: (steps, schedule)
        "constant": (steps, "constant"),
        "cosine": (steps, "cosine"),
        "wsd": (steps, "wsd"),
        f"cosine, {half} steps": (half, "cosine"),
        f"wsd branch at {half}": (half, "wsd"),
    }
    runs = {}
    for name, (n, schedule) in plans.items():
        runs[name] = run(n, LR, seed=exp.seed, eval_batches=eb, warmup=warmup, schedule=schedule,
                         eval_interval=max(1, steps // evals))
        exp.log(f"{name}: val {runs[name]['final_val_loss']:.4f}")
    val = {name: r["final_val_loss"] for name, r in runs.items()}
    exp.metric("val_loss", val)
    exp.table("final", ["schedule", "steps", "final val loss"],
              [[name, plans[name][0], v] for name, v in val.items()],
              caption=f"peak lr {LR:g}, warmup {warmup} steps, min lr {LR / 10:g}, one seed.")
    # constant and WSD are the same run until WSD's decay starts: compare what the last 20% of steps
    # bring with and without the decay, from the same point
    decay_start = int(steps * 0.8)
    wsd_curve, const_curve = dict(runs["wsd"]["val_curve"]), dict(runs["constant"]["val_curve"])
    at_start = wsd_curve.get(decay_start, float("nan"))
    decay_gain = at_start - val["wsd"]
    constant_gain = const_curve.get(decay_start, float("nan")) - val["constant"]
    exp.metric("val_at_decay_start", {"wsd": at_start, "constant": const_curve.get(decay_start)})
    exp.finding("A decaying schedule beats a constant rate: cosine ends lower than constant",
                val["cosine"] < val["constant"], cosine=val["cosine"], constant=val["constant"])
    exp.finding("WSD ends lower than constant too", val["wsd"] < val["constant"], wsd=val["wsd"],
                constant=val["constant"])
    exp.finding("WSD and cosine end within 0.03 nats of each other", abs(val["wsd"] - val["cosine"]) <= 0.03,
                wsd=val["wsd"], cosine=val["cosine"])
    exp.finding("Over the last 20% of steps, decaying the rate lowers val loss more than keeping it at the peak "
                "(from the same point: constant and WSD are the same run until then)",
                decay_gain > constant_gain, wsd_gain=decay_gain, constant_gain=constant_gain)
    branch, short_cos = val[f"wsd branch at {half}"], val[f"cosine, {half} steps"]
    exp.finding(f"A WSD branch decayed at step {half} is as good as a cosine run planned for {half} steps "
                "(within 0.03 nats)", abs(branch - short_cos) <= 0.03, wsd_branch=branch, cosine_short=short_cos)

    fig, axes = figure(2)
    ax = axes[0][0]
    for name, (n, schedule) in plans.items():
        cfg = TrainConfig(max_iters=n, lr=LR, warmup_iters=warmup, schedule=schedule)
        ax.plot(range(1, n + 1), [lr_at(s, cfg) for s in range(n)], label=name)
    ax.set(xlabel="optimizer step", ylabel="learning rate", title="the schedules")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    for name, r in runs.items():
        s, v = zip(*r["val_curve"], strict=True)
        ax.plot(s, v, "o-" if "," not in name and "branch" not in name else "s--", ms=3, label=name)
    ax.set(xlabel="optimizer step", ylabel="val loss (nats/char)", title="held-out loss")
    lo = min(val.values())
    ax.set_ylim(lo - 0.05, lo + 0.8)
    ax.legend(fontsize=8)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
