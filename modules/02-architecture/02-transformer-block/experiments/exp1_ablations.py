"""Take the block apart: remove the norm, the attention, the FFN or the residual — one at a time — and
measure what each removal costs at the same training budget.

The full block is the Llama/MiniMind one: x = x + attn(norm(x)); x = x + ffn(norm(x)). Each variant
changes one switch of the same 4-layer, 128-wide model on TinyShakespeare (same seed, data order,
learning rate and number of steps). Removing a part also removes its parameters, so we report them.
"""

from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_config, train_lm
from mmlab.lab.plots import figure

VARIANTS = {
    "full block": {},
    "no norm": {"norm": "none"},
    "no attention": {"use_attn": False},
    "no FFN": {"use_ffn": False},
    "no residual": {"residual": False},
}


def main(exp: Experiment) -> None:
    steps = exp.pick(full=800, quick=40, smoke=2)
    lr = 2e-3
    exp.set_config(variants=VARIANTS, steps=steps, lr=lr, model="shakespeare-char (4 layers x 128)", batch="12 x 64")
    runs = {}
    for name, changes in VARIANTS.items():
        r = train_lm(shakespeare_config(**changes), steps, lr, seed=exp.seed, eval_batches=exp.pick(50, 5, 2))
        params = r.pop("model").num_params(exclude_embeddings=True)
        runs[name] = {**r, "params": params}
        exp.log(f"{name}: {params:,} params, val {r['final_val_loss']:.4f}")
    exp.metric("runs", runs)
    full = runs["full block"]["final_val_loss"]
    ranked = sorted(VARIANTS, key=lambda k: runs[k]["final_val_loss"])
    exp.table("ablations", ["variant", "non-embedding params", "final val loss", "cost vs full block", "train tok/s"],
              [[k, runs[k]["params"], runs[k]["final_val_loss"], runs[k]["final_val_loss"] - full,
                runs[k]["tokens_per_s"]] for k in VARIANTS],
              caption=f"{steps} steps at lr {lr:g}, one seed. Cost = val loss minus the full block's (nats / char).")
    exp.finding("Every removal costs something (each variant ends above the full block)",
                all(runs[k]["final_val_loss"] > full for k in VARIANTS if k != "full block"), ranking=ranked)
    worst = ranked[-1]
    exp.finding("Removing attention costs the most: without it no position can see another", worst == "no attention",
                worst=worst, loss=runs[worst]["final_val_loss"])
    costs = {k: runs[k]["final_val_loss"] - full for k in VARIANTS if k != "full block"}
    exp.finding("At 4 layers, removing the norm costs the least", min(costs, key=costs.get) == "no norm",
                cheapest=min(costs, key=costs.get), costs=costs)

    fig, axes = figure()
    ax = axes[0][0]
    for name in VARIANTS:
        c = runs[name]["val_curve"]
        ax.plot([s for s, _ in c], [v for _, v in c], "o-", markersize=3, label=name)
    ax.set(xlabel="step", ylabel="val loss (nats / char)", title="one part removed at a time")
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
