"""AdamW, SGD or Muon? Each optimizer at its own best learning rate from a small sweep, at equal steps:
held-out loss, speed, and the memory its state takes.

SGD: momentum 0.9 (Nesterov), no weight decay (as an L2 term it would fight a large rate). AdamW: betas
(0.9, 0.99), decoupled weight decay 0.1 on matrices. Muon (``mmlab.train.muon``): the attention and FFN
matrices get momentum 0.95 and an orthogonalised update (five Newton-Schulz steps), scaled to AdamW's
update size, so its rates are on AdamW's scale; the embedding and norms stay on AdamW. Every run: the
same warmup (10%), cosine decay to lr/10, gradient clipping at 1.0.
"""

import torch
from _common import config, curve_label, run

from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.model.lm import MiniMindLM
from mmlab.train.config import TrainConfig
from mmlab.train.optim import build_optimizer


def state_bytes(optimizer_name: str, **kw) -> int:
    """Bytes of optimizer state after one step (momentum and second-moment buffers)."""
    model = MiniMindLM(config())
    opt = build_optimizer(model, TrainConfig(optimizer=optimizer_name, lr=1e-3, **kw))
    x = torch.randint(model.cfg.vocab_size, (2, 17))
    model(x[:, :-1], targets=x[:, 1:]).loss.backward()
    opt.step()
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
               if isinstance(t, torch.Tensor) and t.dim() > 0)


def main(exp: Experiment) -> None:
    grid = exp.pick(
        full={"sgd": [0.03, 0.1, 0.3, 1.0], "adamw": [1e-3, 3e-3, 1e-2], "muon": [3e-3, 1e-2, 3e-2]},
        quick={"sgd": [0.3, 1.0], "adamw": [3e-3, 1e-2], "muon": [1e-2, 3e-2]},
        smoke={"sgd": [0.1], "adamw": [1e-3], "muon": [1e-3]},
    )
    steps = exp.pick(full=300, quick=60, smoke=3)
    eb = exp.pick(20, 6, 2)
    extra = {"sgd": {"weight_decay": 0.0}, "adamw": {}, "muon": {}}
    exp.set_config(steps=steps, learning_rates=grid, warmup=steps // 10, schedule="cosine to lr/10")
    runs: dict[str, dict[float, dict]] = {}
    for name, lrs in grid.items():
        runs[name] = {}
        for lr in lrs:
            runs[name][lr] = run(steps, lr, seed=exp.seed, eval_batches=eb, warmup=steps // 10, optimizer=name,
                                 **extra[name])
            exp.log(f"{name} lr {lr:g}: {curve_label(runs[name][lr])}, {runs[name][lr]['tokens_per_s']:.0f} tok/s")

    def val(r):
        return r["final_val_loss"] if r["diverged_at"] is None else float("inf")

    best = {name: min(lrs, key=lambda lr, n=name: val(runs[n][lr])) for name, lrs in runs.items()}
    best_val = {name: val(runs[name][lr]) for name, lr in best.items()}
    params = next(iter(runs["adamw"].values()))["params"]
    memory = {name: state_bytes(name, **extra[name]) for name in grid}
    exp.metric("val_loss", {name: {f"{lr:g}": r["final_val_loss"] for lr, r in rs.items()}
                            for name, rs in runs.items()})
    exp.metric("best_lr", best)
    exp.metric("state_bytes", memory)
    exp.table("best", ["optimizer", "best lr", "final val loss", "tokens / s", "state (bytes per parameter)"],
              [[name, f"{best[name]:g}", best_val[name], runs[name][best[name]]["tokens_per_s"],
                memory[name] / params] for name in grid],
              caption=f"{steps} steps; each row is the best of that optimizer's runs "
                      f"({sum(len(v) for v in grid.values())} runs in all, see the sweep table); "
                      f"{params:,} parameters (fp32, 4 bytes each).")
    exp.table("sweep", ["optimizer", "lr", "final val loss"],
              [[name, f"{lr:g}", r["final_val_loss"]] for name, rs in runs.items() for lr, r in rs.items()])
    exp.finding("AdamW beats SGD with momentum, each at its best rate", best_val["adamw"] < best_val["sgd"],
                adamw=best_val["adamw"], sgd=best_val["sgd"])
    exp.finding("Muon beats AdamW, each at its best rate", best_val["muon"] < best_val["adamw"],
                muon=best_val["muon"], adamw=best_val["adamw"])
    exp.finding("AdamW keeps two buffers per parameter, SGD one: AdamW's state is twice SGD's",
                memory["adamw"] == 2 * memory["sgd"], adamw=memory["adamw"], sgd=memory["sgd"])
    exp.finding("Muon's state is smaller than AdamW's (one buffer for the matrices)", memory["muon"] < memory["adamw"],
                muon=memory["muon"], adamw=memory["adamw"])
    exp.finding("Muon's Newton-Schulz steps cost speed on this CPU: fewer tokens/s than AdamW",
                runs["muon"][best["muon"]]["tokens_per_s"] < runs["adamw"][best["adamw"]]["tokens_per_s"],
                muon=runs["muon"][best["muon"]]["tokens_per_s"], adamw=runs["adamw"][best["adamw"]]["tokens_per_s"])

    fig, axes = figure(2)
    ax = axes[0][0]
    for name, rs in runs.items():
        lrs = list(rs)
        ax.plot(lrs, [val(rs[lr]) if val(rs[lr]) != float("inf") else float("nan") for lr in lrs], "o-", label=name)
    ax.set_xscale("log")
    ax.set(xlabel="peak learning rate (log scale)", ylabel="final val loss (nats/char)", title="each optimizer's sweep")
    ax.legend()
    ax = axes[0][1]
    for name in grid:
        s, v = zip(*runs[name][best[name]]["val_curve"], strict=True)
        ax.plot(s, v, "o-", ms=3, label=f"{name}, lr {best[name]:g}")
    ax.set(xlabel="optimizer step", ylabel="val loss (nats/char)", title="each at its best rate")
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
