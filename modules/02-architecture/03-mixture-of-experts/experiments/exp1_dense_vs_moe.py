"""Dense FFN or mixture of experts, at the same *active* parameters: which trains the better model, and
at what speed?

The same 4-layer, 128-wide model on TinyShakespeare with four FFN variants:
  dense          one SwiGLU FFN of hidden 384 per layer
  MoE top-1      4 experts of hidden 384, each token uses 1 (same active parameters as dense)
  MoE top-2      4 experts of hidden 192, each token uses 2 (same active parameters again)
  dense 4x       one FFN of hidden 1536 (as many *total* parameters as the MoE top-1 model)
Same seed, data order, learning rate and steps; the MoE runs use the load-balancing loss (0.01).
"""

from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_config, train_lm
from mmlab.lab.plots import figure
from mmlab.model.summary import active_params

VARIANTS = {
    "dense": {"ffn_size": 384},
    "MoE 4 experts, top-1": {"ffn_size": 384, "n_experts": 4, "n_experts_per_tok": 1},
    "MoE 4 experts, top-2 (half-width)": {"ffn_size": 192, "n_experts": 4, "n_experts_per_tok": 2},
    "dense 4x wide": {"ffn_size": 1536},
}


def main(exp: Experiment) -> None:
    steps = exp.pick(full=800, quick=40, smoke=2)
    lr = 2e-3
    exp.set_config(variants=VARIANTS, steps=steps, lr=lr, model="shakespeare-char (4 layers x 128)", batch="12 x 64",
                   moe_aux_loss_coef=0.01)
    runs = {}
    for name, changes in VARIANTS.items():
        cfg = shakespeare_config(**changes)
        r = train_lm(cfg, steps, lr, seed=exp.seed, eval_batches=exp.pick(50, 5, 2))
        model = r.pop("model")
        runs[name] = {**r, "total_params": model.num_params(), "active_params": active_params(cfg)}
        exp.log(f"{name}: {runs[name]['total_params']:,} total / {runs[name]['active_params']:,} active, "
                f"val {r['final_val_loss']:.4f}, {r['tokens_per_s']:.0f} tok/s")
    exp.metric("runs", runs)
    exp.table("final", ["variant", "total params", "active params per token", "final val loss", "train tokens / s"],
              [[k, r["total_params"], r["active_params"], r["final_val_loss"], r["tokens_per_s"]]
               for k, r in runs.items()],
              caption=f"{steps} steps at lr {lr:g}, one seed; speeds are medians on this CPU.")
    dense, top1, top2, wide = (runs[k] for k in VARIANTS)
    exp.finding("The MoE models have the dense model's active parameters within 1% (the router is the difference)",
                all(abs(r["active_params"] / dense["active_params"] - 1) < 0.01 for r in (top1, top2)),
                dense=dense["active_params"], top1=top1["active_params"], top2=top2["active_params"])
    exp.finding("MoE top-1 ends with a lower val loss than the dense model of equal active parameters",
                top1["final_val_loss"] < dense["final_val_loss"], moe=top1["final_val_loss"],
                dense=dense["final_val_loss"])
    exp.finding("...but does not beat the dense model with as many total parameters",
                top1["final_val_loss"] >= wide["final_val_loss"], moe=top1["final_val_loss"],
                dense_wide=wide["final_val_loss"])
    exp.finding("On this CPU, MoE top-1 trains slower than the dense model (routing and gathering cost time)",
                top1["tokens_per_s"] < dense["tokens_per_s"], moe=top1["tokens_per_s"], dense=dense["tokens_per_s"])

    fig, axes = figure(2, 1, width=5.0, height=3.8)
    for name in VARIANTS:
        c = runs[name]["val_curve"]
        axes[0][0].plot([s for s, _ in c], [v for _, v in c], "o-", markersize=3, label=name)
    axes[0][0].set(xlabel="step", ylabel="val loss (nats / char)", title="dense vs MoE")
    axes[0][0].legend(fontsize=7)
    names = list(VARIANTS)
    axes[0][1].bar(range(len(names)), [runs[n]["tokens_per_s"] for n in names], color=[f"C{i}" for i in range(4)])
    axes[0][1].set_xticks(range(len(names)), ["dense", "MoE top-1", "MoE top-2", "dense 4x"])
    axes[0][1].set(ylabel="train tokens / s", title="speed on this CPU")
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
