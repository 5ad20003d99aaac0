"""Which learning-rate schedule: constant, cosine or warmup-stable-decay (WSD)? Same peak, same steps.

After the same 100-step warmup to the same peak (2e-3), one run keeps the rate constant, one decays it
along a cosine to lr/10, and one holds it (stable) and decays linearly to lr/10 over the last 20% of
the steps (WSD, as in MiniCPM and DeepSeek). We evaluate often, to see *when* each schedule gains.
"""

from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_config, train_lm
from mmlab.lab.plots import figure
from mmlab.train.config import TrainConfig
from mmlab.train.optim import lr_at

SCHEDULES = ("constant", "cosine", "wsd")


def main(exp: Experiment) -> None:
    steps = exp.pick(full=1500, quick=150, smoke=4)
    lr, warmup = 2e-3, exp.pick(100, 10, 1)
    every = exp.pick(50, 15, 2)
    exp.set_config(steps=steps, peak_lr=lr, min_lr=lr / 10, warmup=warmup, wsd_decay_fraction=0.2,
                   model="shakespeare-char (4 layers x 128)", batch="12 x 64", eval_interval=every)
    runs = {}
    for s in SCHEDULES:
        r = train_lm(shakespeare_config(), steps, lr, seed=exp.seed, warmup=warmup, eval_interval=every,
                     eval_batches=exp.pick(40, 5, 2), schedule=s)
        r.pop("model")
        runs[s] = {"final_val_loss": r["final_val_loss"], "val_curve": r["val_curve"]}
        exp.log(f"{s}: val {r['final_val_loss']:.4f}")
    exp.metric("runs", runs)
    decay_start = int(steps * 0.8)

    def val_at(s: str, step: int) -> float:
        return min(runs[s]["val_curve"], key=lambda p: abs(p[0] - step))[1]

    exp.table("final", ["schedule", f"val loss at step {decay_start}", f"final val loss (step {steps})"],
              [[s, val_at(s, decay_start), runs[s]["final_val_loss"]] for s in SCHEDULES],
              caption=f"Peak lr {lr:g}, {warmup} warmup steps, one seed; val loss in nats per character.")
    v = {s: runs[s]["final_val_loss"] for s in SCHEDULES}
    exp.finding("Both decaying schedules end below the constant rate", v["cosine"] < v["constant"] and
                v["wsd"] < v["constant"], **v)
    gain_wsd = val_at("wsd", decay_start) - v["wsd"]
    gain_cos = val_at("cosine", decay_start) - v["cosine"]
    exp.finding("WSD gains more over its decay phase (the last 20% of steps) than cosine does over the same steps",
                gain_wsd > gain_cos, wsd=gain_wsd, cosine=gain_cos)
    exp.finding("Before its decay, WSD is behind cosine (it has not annealed yet)",
                val_at("wsd", decay_start) > val_at("cosine", decay_start),
                wsd=val_at("wsd", decay_start), cosine=val_at("cosine", decay_start))
    exp.finding("WSD ends within 0.02 of cosine", abs(v["wsd"] - v["cosine"]) < 0.02, wsd=v["wsd"], cosine=v["cosine"])

    fig, axes = figure(1, 2, height=3.4)
    for i, s in enumerate(SCHEDULES):
        cfg = TrainConfig(max_iters=steps, lr=lr, min_lr=lr / 10, warmup_iters=warmup, schedule=s)
        axes[0][0].plot(range(steps), [lr_at(t, cfg) for t in range(steps)], color=f"C{i}", label=s)
        curve = [p for p in runs[s]["val_curve"] if p[0] >= steps // 5]  # skip the steep start
        axes[1][0].plot([p[0] for p in curve], [p[1] for p in curve], color=f"C{i}", label=s)
    axes[0][0].set(xlabel="step", ylabel="learning rate", title="the schedules")
    axes[1][0].set(xlabel="step", ylabel="val loss (nats / char)", title="val loss (from 20% of the steps)")
    for ax in (axes[0][0], axes[1][0]):
        ax.axvline(decay_start, color="gray", ls=":", lw=1)
        ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
