"""Pre-LN or Post-LN as the model gets deeper?

The same 128-wide model at 4, 8 and 16 layers, Pre-LN and Post-LN (both RMSNorm), trained on
TinyShakespeare at one learning rate and budget. Before training we record the gradient norm of
every block's parameters on one batch: Post-LN normalises the residual stream after every
sub-layer, so the gradient reaching early blocks passes through every norm on the way back.
"""

import torch

from mmlab.lab import Experiment
from mmlab.lab.lm import batches, block_grad_norms, shakespeare_config, train_lm
from mmlab.lab.plots import figure
from mmlab.model import MiniMindLM


def grad_norms_at_init(cfg, seed: int) -> list[float]:
    torch.manual_seed(seed)
    model = MiniMindLM(cfg)
    x, y = batches(64, 12, 1).sample("train", 12, torch.Generator().manual_seed(seed))
    return block_grad_norms(model, x, y)


def main(exp: Experiment) -> None:
    depths = exp.pick(full=[4, 8, 16], quick=[2, 8], smoke=[2])
    steps = exp.pick(full=300, quick=25, smoke=2)
    lr = 3e-3
    exp.set_config(depths=depths, steps=steps, lr=lr, norm="rmsnorm", width=128, batch="12 x 64")
    rows, results = [], {}
    for depth in depths:
        for position in ("pre", "post"):
            cfg = shakespeare_config(n_layers=depth, norm_position=position)
            grads = grad_norms_at_init(cfg, exp.seed)
            run = train_lm(cfg, steps, lr, seed=exp.seed, eval_batches=exp.pick(40, 5, 2))
            results[(depth, position)] = {"grad_norms": grads, **{k: v for k, v in run.items() if k != "model"}}
            exp.log(f"depth {depth} {position}: val {run['final_val_loss']:.4f}, grad first/last "
                    f"{grads[0] / grads[-1]:.3f}")
        pre, post = results[(depth, "pre")], results[(depth, "post")]
        gap = post["final_val_loss"] - pre["final_val_loss"]
        rows.append([depth, pre["final_val_loss"], post["final_val_loss"], gap,
                     pre["grad_norms"][0] / pre["grad_norms"][-1], post["grad_norms"][0] / post["grad_norms"][-1]])
    exp.metric("runs", {f"{d} layers {p}": r for (d, p), r in results.items()})
    exp.table("depth", ["layers", "Pre-LN val loss", "Post-LN val loss", "Post - Pre",
                        "Pre-LN grad norm block 1 / last", "Post-LN grad norm block 1 / last"], rows,
              caption=f"{steps} steps at lr {lr:g}; gradient norms measured at initialisation on one batch.")
    gaps = [r[3] for r in rows]
    exp.finding("Pre-LN ends with a lower val loss than Post-LN at the largest depth", gaps[-1] > 0,
                depth=depths[-1], post_minus_pre=gaps[-1])
    exp.finding("Post-LN's gap to Pre-LN grows with depth", len(gaps) > 1 and gaps[-1] > gaps[0],
                gap_shallowest=gaps[0], gap_deepest=gaps[-1])
    deepest = depths[-1]
    pre_ratio = results[(deepest, "pre")]["grad_norms"][0] / results[(deepest, "pre")]["grad_norms"][-1]
    post_ratio = results[(deepest, "post")]["grad_norms"][0] / results[(deepest, "post")]["grad_norms"][-1]
    exp.finding(f"At init, block 1 of the {deepest}-layer Post-LN model gets a smaller share of the last block's "
                "gradient norm than in Pre-LN", post_ratio < pre_ratio, pre_ln=pre_ratio, post_ln=post_ratio)

    fig, axes = figure(ncols=2)
    for (depth, position), r in results.items():
        if depth == deepest:
            axes[0][0].semilogy(range(1, depth + 1), r["grad_norms"], "o-", markersize=3, label=f"{position}-LN")
    axes[0][0].set(xlabel="block", ylabel="gradient norm at init", title=f"{deepest} layers: gradient per block")
    axes[0][0].legend()
    axes[0][1].plot(depths, [r[1] for r in rows], "o-", label="Pre-LN")
    axes[0][1].plot(depths, [r[2] for r in rows], "s-", label="Post-LN")
    axes[0][1].set(xlabel="layers", ylabel="final val loss (nats / char)", title=f"{steps} steps at lr {lr:g}")
    axes[0][1].legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
