"""What happens to activations and gradients in a deep stack with and without normalization?

A 24-layer model of the shakespeare-char width, at initialisation, reads a batch of real
TinyShakespeare text. We record the standard deviation of the hidden state after every block and
the gradient norm of every block's parameters after one backward pass of the LM loss, for:
  * pre-LN + RMSNorm with residuals (the default model),
  * no normalization, with residuals,
  * no normalization and no residuals (a plain stack), with the model's init (std 0.02, made for
    residual networks) and with LeCun's init (std 1/sqrt(fan_in), made for plain stacks).
The reference tutorial claims the activation std falls "from 1.0 to 0.016" without normalization.
"""

import torch

from mmlab.lab import Experiment
from mmlab.lab.lm import batches, block_grad_norms, shakespeare_config
from mmlab.lab.plots import figure
from mmlab.model import MiniMindLM

VARIANTS = {
    "pre-LN RMSNorm + residual": {"norm": "rmsnorm", "residual": True},
    "no norm + residual": {"norm": "none", "residual": True},
    "no norm, no residual": {"norm": "none", "residual": False},
    "no norm, no residual, LeCun init": {"norm": "none", "residual": False, "init_std": 128**-0.5,
                                         "scaled_residual_init": False},
}


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def measure(cfg, x, y):
    model = MiniMindLM(cfg)
    stds = []
    hooks = [b.register_forward_hook(lambda m, i, o: stds.append(o[0].detach().std().item())) for b in model.blocks]
    emb_std = model.tok_emb(x).std().item()
    grads = block_grad_norms(model, x, y)
    for h in hooks:
        h.remove()
    return {"embedding_std": emb_std, "activation_std": stds, "grad_norm": grads}


def main(exp: Experiment) -> None:
    layers = exp.pick(full=24, quick=24, smoke=4)
    seeds = exp.pick(full=5, quick=2, smoke=1)
    exp.set_config(n_layers=layers, seeds=seeds, batch="12 x 64 characters of TinyShakespeare", variants=VARIANTS)
    data = batches(64, 12, 1)
    results = {}
    for name, switches in VARIANTS.items():
        runs = []
        for seed in range(seeds):
            torch.manual_seed(seed)
            x, y = data.sample("train", 12, torch.Generator().manual_seed(seed))
            runs.append(measure(shakespeare_config(n_layers=layers, **switches), x, y))
        results[name] = {
            key: [sum(r[key][i] for r in runs) / len(runs) for i in range(layers)]
            for key in ("activation_std", "grad_norm")
        }
        results[name]["embedding_std"] = sum(r["embedding_std"] for r in runs) / len(runs)
        exp.log(f"{name}: std layer 1 {results[name]['activation_std'][0]:.4f} -> layer {layers} "
                f"{results[name]['activation_std'][-1]:.4f}")
    exp.metric("per_layer", results)

    rows = []
    for name, r in results.items():
        s, g = r["activation_std"], r["grad_norm"]
        rows.append([name, r["embedding_std"], s[0], s[-1], ratio(s[-1], s[0]), g[0], g[-1], ratio(g[0], g[-1])])
    exp.table("summary", ["variant", "embedding std", "std after block 1", f"std after block {layers}",
                          "last / first std", "grad norm block 1", f"grad norm block {layers}",
                          "first / last grad"], rows,
              caption=f"Means over {seeds} seeds, at initialisation.")

    plain = results["no norm, no residual, LeCun init"]
    tiny = results["no norm, no residual"]
    normed = results["pre-LN RMSNorm + residual"]
    exp.finding(f"Without normalization or residuals (LeCun init), the activation std shrinks over {layers} "
                "layers (last / first < 0.1)", ratio(plain["activation_std"][-1], plain["activation_std"][0]) < 0.1,
                first=plain["activation_std"][0], last=plain["activation_std"][-1])
    exp.finding("The reference's 'from 1.0 to 0.016' matches the plain stack (LeCun init): first block within "
                "2x of 1.0 and last block within 2x of 0.016",
                0.008 <= plain["activation_std"][-1] <= 0.032 and 0.5 <= plain["activation_std"][0] <= 2.0,
                first=plain["activation_std"][0], last=plain["activation_std"][-1])
    exp.finding("With the model's residual-network init, a plain stack's activations vanish (last std < 1e-6)",
                tiny["activation_std"][-1] < 1e-6, last=tiny["activation_std"][-1])
    exp.finding("With pre-LN + RMSNorm and residuals, the activation std stays within 2x of block 1's at every block",
                all(0.5 <= ratio(v, normed["activation_std"][0]) <= 2 for v in normed["activation_std"]),
                first=normed["activation_std"][0], last=normed["activation_std"][-1])
    exp.finding("With pre-LN + RMSNorm and residuals, gradients reach block 1 at least a tenth as strong as "
                "at the last block", ratio(normed["grad_norm"][0], normed["grad_norm"][-1]) > 0.1,
                first=normed["grad_norm"][0], last=normed["grad_norm"][-1])

    fig, axes = figure(ncols=2)
    for name, r in results.items():
        axes[0][0].semilogy(range(1, layers + 1), r["activation_std"], "o-", markersize=3, label=name)
        axes[0][1].semilogy(range(1, layers + 1), r["grad_norm"], "o-", markersize=3, label=name)
    axes[0][0].set(xlabel="block", ylabel="std of the hidden state after the block", title="activations at init")
    axes[0][1].set(xlabel="block", ylabel="gradient norm of the block's parameters", title="gradients at init")
    axes[0][0].legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
