"""Does the router use all its experts? Expert load with and without the load-balancing loss.

A 4-layer model with 4 experts per layer (top-1) trained on TinyShakespeare with the balance loss
weighted 0 (off), 0.01 (MiniMind's default) and 0.1. A recorder wrapped around ``MoE.forward``
keeps, at every training step, the share of tokens each expert of each layer received. We plot
those shares over training (for the layer that ends most unbalanced without the loss) and report
the final imbalance: the busiest expert's share divided by the fair share (1 / 4), and the val loss.
"""

import torch

from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_config, train_lm
from mmlab.lab.plots import figure
from mmlab.model.moe import MoE

COEFS = [0.0, 0.01, 0.1]
N_EXPERTS = 4


class LoadRecorder:
    """Patches MoE.forward for the duration of a run, recording each training call's load."""

    def __init__(self):
        self.loads: list[torch.Tensor] = []
        self._orig = MoE.forward

    def __enter__(self):
        recorder, orig = self, self._orig

        def forward(layer, x):
            out = orig(layer, x)
            if layer.training:
                recorder.loads.append(layer.last_load.float() / layer.last_load.sum())
            return out

        MoE.forward = forward
        return self

    def __exit__(self, *exc):
        MoE.forward = self._orig


def main(exp: Experiment) -> None:
    steps = exp.pick(full=800, quick=60, smoke=2)
    lr = 2e-3
    exp.set_config(coefs=COEFS, steps=steps, lr=lr, experts=N_EXPERTS, top_k=1, model="4 layers x 128",
                   batch="12 x 64")
    runs = {}
    for coef in COEFS:
        cfg = shakespeare_config(n_experts=N_EXPERTS, n_experts_per_tok=1, moe_aux_loss_coef=coef)
        with LoadRecorder() as rec:
            r = train_lm(cfg, steps, lr, seed=exp.seed, eval_batches=exp.pick(50, 5, 2))
        r.pop("model")
        n_layers = cfg.n_layers
        loads = torch.stack(rec.loads).view(-1, n_layers, N_EXPERTS)  # (steps, layers, experts)
        last = loads[-max(1, len(loads) // 10):].mean(0)  # the last 10% of training
        imbalance = (last.max(-1).values * N_EXPERTS).tolist()  # busiest expert / fair share, per layer
        runs[coef] = {**r, "final_load": last.tolist(), "imbalance": imbalance,
                      "load_curve": loads[:, :, :].tolist() if exp.mode != "full" else loads[::10].tolist()}
        exp.log(f"coef {coef}: val {r['final_val_loss']:.4f}, imbalance per layer {[round(i, 2) for i in imbalance]}")
    exp.metric("runs", runs)
    exp.table("balance", ["balance-loss weight", "final val loss", "busiest expert / fair share (mean over layers)",
                          "worst layer", "least-used expert's share (min over layers)"],
              [[c, runs[c]["final_val_loss"], sum(runs[c]["imbalance"]) / len(runs[c]["imbalance"]),
                max(runs[c]["imbalance"]), min(min(layer) for layer in runs[c]["final_load"])] for c in COEFS],
              caption=f"{N_EXPERTS} experts, top-1, {steps} steps at lr {lr:g}; loads averaged over the last 10% of "
                      f"training steps. Perfect balance: 1.0 and a share of {1 / N_EXPERTS:g} for every expert.")
    mean_imb = {c: sum(runs[c]["imbalance"]) / len(runs[c]["imbalance"]) for c in COEFS}
    exp.finding("Without the balance loss the load is more uneven than with it (0.01)", mean_imb[0.0] > mean_imb[0.01],
                off=mean_imb[0.0], on=mean_imb[0.01])
    exp.finding("A stronger balance loss (0.1) balances further", mean_imb[0.1] < mean_imb[0.01],
                coef_0_01=mean_imb[0.01], coef_0_1=mean_imb[0.1])
    v = {c: runs[c]["final_val_loss"] for c in COEFS}
    exp.finding("Balancing costs little: the val losses are within 0.05 nats of each other",
                max(v.values()) - min(v.values()) < 0.05, losses=v)

    fig, axes = figure(len(COEFS), 1, width=4.2, height=3.4)
    stride = 10 if exp.mode == "full" else 1
    shown = max(range(len(runs[COEFS[0]]["imbalance"])), key=lambda i: runs[COEFS[0]]["imbalance"][i])
    for ax, coef in zip(axes[0], COEFS, strict=True):
        curve = torch.tensor(runs[coef]["load_curve"])  # (points, layers, experts)
        xs = [i * stride for i in range(curve.shape[0])]
        for e in range(N_EXPERTS):
            ax.plot(xs, curve[:, shown, e].tolist(), label=f"expert {e}")
        ax.axhline(1 / N_EXPERTS, color="gray", ls=":", label="fair share")
        ax.set(xlabel="training step", ylabel=f"share of tokens (layer {shown})", title=f"balance loss {coef:g}",
               ylim=(0, 1))
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"layer {shown}: the most unbalanced layer without the balance loss")
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
