"""Top-1 or top-2 routing: the same 4 experts, each token sent to one or to two of them.

Top-2 doubles the active FFN parameters and FLOPs per token and gives the router a weighted blend
instead of a hard choice. On TinyShakespeare (4 layers x 128, 4 experts of hidden 384, balance loss
0.01, same seed and steps): val loss, active parameters and training speed.
"""

from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_config, train_lm
from mmlab.lab.plots import figure
from mmlab.model.summary import active_params


def main(exp: Experiment) -> None:
    steps = exp.pick(full=800, quick=40, smoke=2)
    lr = 2e-3
    exp.set_config(steps=steps, lr=lr, experts=4, expert_ffn=384, model="4 layers x 128", batch="12 x 64")
    runs = {}
    for k in (1, 2):
        cfg = shakespeare_config(ffn_size=384, n_experts=4, n_experts_per_tok=k)
        r = train_lm(cfg, steps, lr, seed=exp.seed, eval_batches=exp.pick(50, 5, 2))
        r.pop("model")
        runs[k] = {**r, "active_params": active_params(cfg)}
        exp.log(f"top-{k}: val {r['final_val_loss']:.4f}, {r['tokens_per_s']:.0f} tok/s")
    exp.metric("runs", runs)
    exp.table("topk", ["routing", "active params per token", "final val loss", "train tokens / s"],
              [[f"top-{k}", r["active_params"], r["final_val_loss"], r["tokens_per_s"]] for k, r in runs.items()],
              caption=f"{steps} steps at lr {lr:g}, one seed.")
    exp.finding("Top-2 ends with a lower val loss than top-1", runs[2]["final_val_loss"] < runs[1]["final_val_loss"],
                top1=runs[1]["final_val_loss"], top2=runs[2]["final_val_loss"])
    exp.finding("Top-2 trains slower than top-1 (twice the expert work per token)",
                runs[2]["tokens_per_s"] < runs[1]["tokens_per_s"], top1=runs[1]["tokens_per_s"],
                top2=runs[2]["tokens_per_s"])

    fig, axes = figure()
    for k, r in runs.items():
        c = r["val_curve"]
        axes[0][0].plot([s for s, _ in c], [v for _, v in c], "o-", markersize=3, label=f"top-{k}")
    axes[0][0].set(xlabel="step", ylabel="val loss (nats / char)", title="4 experts: top-1 vs top-2 routing")
    axes[0][0].legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
