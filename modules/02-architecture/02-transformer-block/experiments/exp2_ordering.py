"""Where do the norms go, and do the sub-layers run one after the other or side by side?

Four block layouts of the same 6-layer, 128-wide model:
  Pre-LN    x = x + f(norm(x))                    (GPT-2 onwards, Llama, MiniMind)
  Post-LN   x = norm(x + f(x))                    (the 2017 Transformer, BERT)
  sandwich  x = x + norm'(f(norm(x)))             (CogView, Gemma 2: also normalise what is written)
  parallel  x = x + attn(norm(x)) + ffn(norm(x))  (GPT-J, PaLM: one norm, both sub-layers at once)
trained at a moderate and at a high learning rate, since layouts differ most in how much learning
rate they tolerate.
"""

from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_config, train_lm
from mmlab.lab.plots import figure

LAYOUTS = {
    "pre-LN": {},
    "post-LN": {"norm_position": "post"},
    "sandwich": {"norm_position": "sandwich"},
    "parallel": {"parallel_block": True},
}


def main(exp: Experiment) -> None:
    steps = exp.pick(full=500, quick=20, smoke=2)
    lrs = exp.pick(full=[2e-3, 1e-2], quick=[2e-3, 1e-2], smoke=[2e-3])
    exp.set_config(layouts=LAYOUTS, steps=steps, lrs=lrs, model="6 layers x 128", batch="12 x 64")
    runs = {}
    for name, changes in LAYOUTS.items():
        for lr in lrs:
            r = train_lm(shakespeare_config(n_layers=6, **changes), steps, lr, seed=exp.seed,
                         eval_batches=exp.pick(40, 5, 2))
            r.pop("model")
            runs[f"{name}@{lr:g}"] = r
            exp.log(f"{name} lr {lr:g}: val {r['final_val_loss']:.4f}, diverged at {r['diverged_at']}")
    exp.metric("runs", runs)
    exp.table("layouts", ["layout", *[f"val loss at lr {lr:g}" for lr in lrs], "train tok/s"],
              [[name, *[runs[f"{name}@{lr:g}"]["final_val_loss"] for lr in lrs],
                runs[f"{name}@{lrs[0]:g}"]["tokens_per_s"]] for name in LAYOUTS],
              caption=f"{steps} steps, one seed; nan = diverged (the run stopped at a non-finite loss).")
    lo, hi = lrs[0], lrs[-1]
    v = {name: runs[f"{name}@{lo:g}"]["final_val_loss"] for name in LAYOUTS}
    exp.finding(f"At lr {lo:g}, Pre-LN beats Post-LN", v["pre-LN"] < v["post-LN"], pre=v["pre-LN"],
                post=v["post-LN"])
    if hi != lo:
        def hurt(name):
            a, b = runs[f"{name}@{lo:g}"]["final_val_loss"], runs[f"{name}@{hi:g}"]["final_val_loss"]
            return b - a if b == b else float("inf")  # NaN: diverged

        h = {name: hurt(name) for name in LAYOUTS}
        exp.metric("high_lr_penalty", h)
        exp.finding(f"Raising the lr to {hi:g} hurts Post-LN more than Pre-LN", h["post-LN"] > h["pre-LN"],
                    penalties=h)
    exp.finding("The parallel block is within 0.05 nats of the sequential Pre-LN block",
                abs(v["parallel"] - v["pre-LN"]) < 0.05, parallel=v["parallel"], pre=v["pre-LN"])
    exp.finding("The sandwich layout is within 0.05 nats of Pre-LN", abs(v["sandwich"] - v["pre-LN"]) < 0.05,
                sandwich=v["sandwich"], pre=v["pre-LN"])

    fig, axes = figure(len(lrs), 1, width=4.8, height=3.6)
    for ax, lr in zip(axes[0], lrs, strict=True):
        for name in LAYOUTS:
            c = runs[f"{name}@{lr:g}"]["val_curve"]
            ax.plot([s for s, _ in c], [x for _, x in c], "o-", markersize=3, label=name)
        ax.set(xlabel="step", ylabel="val loss (nats / char)", title=f"lr {lr:g}")
        ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
