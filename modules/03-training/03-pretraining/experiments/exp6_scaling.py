"""How does loss fall with model size and with data? A small scaling study: six model sizes trained on
the same tokens, a power law fitted to val loss against parameters and against tokens — and which size
is best for a given compute budget.

Models: the shakespeare-char architecture at widths and depths from 2 x 32 to 6 x 192 (N = parameters
outside the embedding). Each trains on the same tokens (same data order, AdamW 3e-3, warmup 10%,
cosine), evaluated at regular steps. Fits: log L = log A - alpha log N over the models' final losses,
and log L = log B - beta log D over the largest model's evaluations (D = tokens seen). Compute is
counted as 6 N D floating-point operations.
"""

import itertools

import numpy as np
from _common import BATCH, BLOCK, config, run

from mmlab.lab import Experiment
from mmlab.lab.plots import figure

LR = 3e-3


def power_fit(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """Least squares on log y = log a - k log x: (a, k, R^2 in log space)."""
    lx, ly = np.log(x), np.log(y)
    slope, intercept = np.polyfit(lx, ly, 1)
    pred = intercept + slope * lx
    r2 = 1 - np.sum((ly - pred) ** 2) / np.sum((ly - ly.mean()) ** 2)
    return float(np.exp(intercept)), float(-slope), float(r2)


def main(exp: Experiment) -> None:
    shapes = exp.pick(full=[(2, 32), (2, 64), (4, 64), (4, 96), (4, 128), (6, 192)],
                      quick=[(2, 32), (2, 64), (4, 96)], smoke=[(1, 16), (1, 32), (2, 32)])
    steps = exp.pick(full=400, quick=80, smoke=4)
    n_evals = exp.pick(full=10, quick=4, smoke=2)
    eb = exp.pick(20, 6, 2)
    exp.set_config(shapes=[f"{layers} x {width}" for layers, width in shapes], steps=steps,
                   tokens=steps * BATCH * BLOCK, lr=LR, evaluations=n_evals)
    runs = {}
    for layers, width in shapes:
        name = f"{layers} x {width}"
        cfg = config(n_layers=layers, hidden_size=width, n_heads=max(1, width // 32))
        runs[name] = run(steps, LR, seed=exp.seed, eval_batches=eb, cfg=cfg, warmup=steps // 10,
                         eval_interval=max(1, steps // n_evals))
        exp.log(f"{name}: N = {runs[name]['non_embedding_params']:,}, val {runs[name]['final_val_loss']:.4f}")
    names = list(runs)
    n_params = [runs[n]["non_embedding_params"] for n in names]
    finals = [runs[n]["final_val_loss"] for n in names]
    a, alpha, r2_n = power_fit(n_params, finals)
    largest = names[-1]
    curve = runs[largest]["val_curve"]
    tokens = [s * BATCH * BLOCK for s, _ in curve]
    b, beta, r2_d = power_fit(tokens, [v for _, v in curve])
    # compute-optimal frontier: for each budget C, the lowest loss any model reached with 6 N D <= C
    points = [(6 * runs[n]["non_embedding_params"] * s * BATCH * BLOCK, v, n) for n in names
              for s, v in runs[n]["val_curve"]]
    smallest_budget = 6 * runs[largest]["non_embedding_params"] * curve[0][0] * BATCH * BLOCK
    within = [p for p in points if p[0] <= smallest_budget]
    best_small = min(within, key=lambda p: p[1])[2] if within else None
    exp.metric("models", {n: {"non_embedding_params": runs[n]["non_embedding_params"], "params": runs[n]["params"],
                              "final_val_loss": runs[n]["final_val_loss"], "tokens_per_s": runs[n]["tokens_per_s"]}
                          for n in names})
    exp.metric("fit_params", {"A": a, "alpha": alpha, "r2": r2_n})
    exp.metric("fit_tokens", {"B": b, "beta": beta, "r2": r2_d, "model": largest})
    exp.metric("best_at_smallest_budget", {"budget_flops": smallest_budget, "model": best_small})
    exp.table("models", ["layers x width", "params (non-embedding)", "final val loss", "tokens / s"],
              [[n, runs[n]["non_embedding_params"], runs[n]["final_val_loss"], runs[n]["tokens_per_s"]]
               for n in names],
              caption=f"{steps} steps of {BATCH * BLOCK:,} tokens each ({steps * BATCH * BLOCK:,} tokens), one seed.")
    exp.table("fits", ["fit", "form", "exponent", "R² (log space)"],
              [["loss vs parameters", f"L = {a:.3g} · N^-{alpha:.3g}", alpha, r2_n],
               [f"loss vs tokens ({largest})", f"L = {b:.3g} · D^-{beta:.3g}", beta, r2_d]])
    exp.finding("Every larger model ends lower than the one before it (at equal tokens)",
                all(x > y for x, y in itertools.pairwise(finals)), **dict(zip(names, finals, strict=True)))
    exp.finding("A power law in parameters fits the final losses (R² >= 0.9 in log space)", r2_n >= 0.9,
                alpha=alpha, r2=r2_n)
    exp.finding("A power law in tokens fits the largest model's curve (R² >= 0.9 in log space)", r2_d >= 0.9,
                beta=beta, r2=r2_d)
    exp.finding("At the smallest compute budget the largest model is not the best choice: a smaller model "
                "reaches lower loss with the same FLOPs", best_small is not None and best_small != largest,
                budget_flops=smallest_budget, best=best_small)

    fig, axes = figure(3, width=5.0)
    ax = axes[0][0]
    ax.loglog(n_params, finals, "o", label="measured")
    xs = np.geomspace(min(n_params), max(n_params), 50)
    ax.loglog(xs, a * xs ** -alpha, "--", label=f"fit: alpha = {alpha:.3f}, R² = {r2_n:.2f}")
    ax.set(xlabel="non-embedding parameters N (log)", ylabel="final val loss (nats/char, log)",
           title="loss vs model size")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    ax.loglog(tokens, [v for _, v in curve], "o", label=f"{largest}, measured")
    xs = np.geomspace(min(tokens), max(tokens), 50)
    ax.loglog(xs, b * xs ** -beta, "--", label=f"fit: beta = {beta:.3f}, R² = {r2_d:.2f}")
    ax.set(xlabel="training tokens D (log)", ylabel="val loss (nats/char, log)", title="loss vs data")
    ax.legend(fontsize=8)
    ax = axes[0][2]
    for n in names:
        c = [(6 * runs[n]["non_embedding_params"] * s * BATCH * BLOCK, v) for s, v in runs[n]["val_curve"]]
        ax.loglog(*zip(*c, strict=True), "o-", ms=3, label=n)
    ax.set(xlabel="training compute 6·N·D (FLOPs, log)", ylabel="val loss (nats/char, log)",
           title="loss vs compute")
    ax.legend(fontsize=8)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
