"""With or without residual connections, as the model gets deeper: val loss and the gradient each layer gets.

The same 128-wide Pre-LN model at 2, 4, 8 and 16 layers, with and without the residual stream
(``residual=False``: each sub-layer's output *replaces* x instead of being added to it), trained on
TinyShakespeare at one learning rate and budget. Before and after training we record the gradient
norm of every block's parameters on one batch: the "gradient flow" picture.
"""

import torch

from mmlab.lab import Experiment
from mmlab.lab.lm import batches, block_grad_norms, shakespeare_config, train_lm
from mmlab.lab.plots import figure
from mmlab.model import MiniMindLM


def main(exp: Experiment) -> None:
    depths = exp.pick(full=[2, 4, 8, 16], quick=[2, 8], smoke=[2])
    steps = exp.pick(full=300, quick=40, smoke=2)
    lr = 2e-3
    exp.set_config(depths=depths, steps=steps, lr=lr, width=128, batch="12 x 64", norm="pre-LN RMSNorm")
    x, y = batches(64, 12, 1).sample("val", 12, torch.Generator().manual_seed(exp.seed))
    runs = {}
    for depth in depths:
        for residual in (True, False):
            cfg = shakespeare_config(n_layers=depth, residual=residual)
            torch.manual_seed(exp.seed)
            init_grads = block_grad_norms(MiniMindLM(cfg), x, y)
            r = train_lm(cfg, steps, lr, seed=exp.seed, eval_batches=exp.pick(20, 5, 2))
            model = r.pop("model")
            runs[f"{depth}/{residual}"] = {**r, "depth": depth, "residual": residual, "grads_init": init_grads,
                                           "grads_trained": block_grad_norms(model, x, y)}
            exp.log(f"depth {depth}, residual {residual}: val {r['final_val_loss']:.4f}")
    exp.metric("runs", runs)

    rows = []
    for depth in depths:
        w, wo = runs[f"{depth}/True"], runs[f"{depth}/False"]
        rows.append([depth, w["final_val_loss"], wo["final_val_loss"], wo["final_val_loss"] - w["final_val_loss"],
                     min(w["grads_init"]), max(w["grads_init"]), min(wo["grads_init"]), max(wo["grads_init"])])
    exp.table("depth", ["layers", "val loss, residual", "val loss, no residual", "gap (no - with)",
                        "block grad norm at init: smallest, residual", "largest, residual",
                        "smallest, no residual", "largest, no residual"], rows,
              caption=f"{steps} steps at lr {lr:g}, one seed; gradient norms on one val batch.")
    gaps = [r[3] for r in rows]
    exp.finding("With residuals, the model is at least as good at every depth (gap >= 0)", min(gaps) >= 0, gaps=gaps)
    exp.finding("Without residuals the gap grows with depth (deepest gap > shallowest gap)",
                len(gaps) > 1 and gaps[-1] > gaps[0], shallowest=gaps[0], deepest=gaps[-1])
    d = depths[-1]
    w_best = min(runs[f"{k}/True"]["final_val_loss"] for k in depths)
    exp.finding("With residuals, the deepest model is (one of) the best: within 0.05 of the best depth",
                runs[f"{d}/True"]["final_val_loss"] - w_best < 0.05, deepest=runs[f"{d}/True"]["final_val_loss"],
                best=w_best)
    wo = runs[f"{d}/False"]["grads_init"]
    w = runs[f"{d}/True"]["grads_init"]
    exp.finding(f"At init, the {d}-layer model without residuals gets (almost) no gradient: every block's gradient "
                "norm is below 1e-6", max(wo) < 1e-6, largest=max(wo))
    exp.finding(f"With residuals, every block of the {d}-layer model gets a gradient of the same order at init "
                "(largest / smallest < 10)", max(w) / max(min(w), 1e-30) < 10, largest=max(w), smallest=min(w))

    fig, axes = figure(2, 1, width=5.0, height=3.8)
    for residual, style in ((True, "o-"), (False, "s--")):
        axes[0][0].plot(depths, [runs[f"{k}/{residual}"]["final_val_loss"] for k in depths], style,
                        label="residual" if residual else "no residual")
        for when, alpha in (("grads_init", 0.5), ("grads_trained", 1.0)):
            g = runs[f"{d}/{residual}"][when]  # exact zeros are drawn at the floor of the plot, 1e-12
            axes[0][1].semilogy(range(1, d + 1), [max(v, 1e-12) for v in g], style, alpha=alpha, markersize=3,
                                label=f"{'residual' if residual else 'no residual'}, "
                                      f"{'init' if when == 'grads_init' else 'trained'}")
    axes[0][0].set_xscale("log", base=2)
    axes[0][0].set_xticks(depths, [str(k) for k in depths])
    axes[0][0].set(xlabel="layers", ylabel="final val loss (nats / char)", title=f"depth, {steps} steps")
    axes[0][0].legend()
    axes[0][1].set(xlabel="block (1 = nearest the input)", ylabel="gradient norm of the block's parameters",
                   title=f"gradient flow, {d} layers")
    axes[0][1].legend(fontsize=7)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
