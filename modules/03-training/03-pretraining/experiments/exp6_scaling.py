"""How does loss fall with model size and with data? A small scaling experiment with fitted power laws.

Model size: 4-layer models from 32 to 256 wide, each trained on the same tokens. Data: the 128-wide
model trained for 125 to 2,000 steps, each run with its own full cosine schedule (a schedule cut
short is not a shorter run). For each we fit L = E + A * X^(-alpha) (E: the loss no amount of X
removes at this setting) by a grid over E and a straight-line fit of log(L - E) against log X. Five
points and one seed: the exponents are illustrations of the method, not laws.
"""

import itertools
import math

import numpy as np

from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_config, train_lm
from mmlab.lab.plots import figure


def fit_power_law(xs: list[float], ys: list[float]) -> dict[str, float]:
    """L = E + A x^-alpha: the E in [0, min(y)) whose log-log line fits best (R^2), and that line."""
    lx = np.log(np.asarray(xs, dtype=float))
    y = np.asarray(ys, dtype=float)
    best = None
    for e in np.linspace(0, y.min() * 0.995, 400):
        ly = np.log(y - e)
        slope, intercept = np.polyfit(lx, ly, 1)
        pred = slope * lx + intercept
        r2 = 1 - ((ly - pred) ** 2).sum() / max(((ly - ly.mean()) ** 2).sum(), 1e-12)
        if best is None or r2 > best["r2"]:
            best = {"E": float(e), "A": float(math.exp(intercept)), "alpha": float(-slope), "r2": float(r2)}
    return best


def main(exp: Experiment) -> None:
    widths = exp.pick(full=[32, 64, 96, 128, 192, 256], quick=[32, 64, 128], smoke=[32, 64])
    steps = exp.pick(full=1000, quick=80, smoke=2)
    step_budgets = exp.pick(full=[125, 250, 500, 1000, 2000], quick=[20, 40, 80], smoke=[2, 3])
    exp.set_config(widths=widths, steps_for_size=steps, step_budgets=step_budgets, lr=2e-3, batch="12 x 64",
                   layers=4)
    size_runs = {}
    for w in widths:
        cfg = shakespeare_config(hidden_size=w, n_heads=max(1, w // 32))
        r = train_lm(cfg, steps, 2e-3, seed=exp.seed, eval_batches=exp.pick(40, 5, 2))
        model = r.pop("model")
        size_runs[w] = {"params": model.num_params(exclude_embeddings=True), "final_val_loss": r["final_val_loss"]}
        exp.log(f"width {w}: {size_runs[w]['params']:,} params, val {r['final_val_loss']:.4f}")
    data_runs = {}
    for s in step_budgets:
        r = train_lm(shakespeare_config(), s, 2e-3, seed=exp.seed, eval_batches=exp.pick(40, 5, 2))
        r.pop("model")
        data_runs[s] = {"tokens": s * 12 * 64, "final_val_loss": r["final_val_loss"]}
        exp.log(f"{s} steps: val {r['final_val_loss']:.4f}")
    exp.metric("size_runs", size_runs)
    exp.metric("data_runs", data_runs)
    n_fit = fit_power_law([r["params"] for r in size_runs.values()], [r["final_val_loss"] for r in size_runs.values()])
    d_fit = fit_power_law([r["tokens"] for r in data_runs.values()], [r["final_val_loss"] for r in data_runs.values()])
    exp.metric("fit_params", n_fit)
    exp.metric("fit_tokens", d_fit)
    exp.table("size", ["width", "non-embedding params", "final val loss"],
              [[w, r["params"], r["final_val_loss"]] for w, r in size_runs.items()],
              caption=f"{steps} steps of 12 x 64 tokens each.")
    exp.table("data", ["steps", "training tokens", "final val loss"],
              [[s, r["tokens"], r["final_val_loss"]] for s, r in data_runs.items()],
              caption="The 128-wide model; each run has its own cosine schedule.")
    exp.table("fits", ["varied", "E", "A", "alpha", "R^2 (log scale)"],
              [["parameters", n_fit["E"], n_fit["A"], n_fit["alpha"], n_fit["r2"]],
               ["tokens", d_fit["E"], d_fit["A"], d_fit["alpha"], d_fit["r2"]]])
    sv = [r["final_val_loss"] for r in size_runs.values()]
    dv = [r["final_val_loss"] for r in data_runs.values()]
    exp.finding("Val loss falls with every step up in model size", all(a > b for a, b in itertools.pairwise(sv)),
                losses=sv)
    exp.finding("Val loss falls with every doubling of the data", all(a > b for a, b in itertools.pairwise(dv)),
                losses=dv)
    exp.finding("A power law plus a constant fits both (R^2 > 0.95 on the log scale)",
                n_fit["r2"] > 0.95 and d_fit["r2"] > 0.95, r2_params=n_fit["r2"], r2_tokens=d_fit["r2"])

    fig, axes = figure(2)
    for ax, runs, key, fit, label in ((axes[0][0], size_runs, "params", n_fit, "non-embedding parameters"),
                                      (axes[0][1], data_runs, "tokens", d_fit, "training tokens")):
        xs = np.array([r[key] for r in runs.values()], dtype=float)
        ax.plot(xs, [r["final_val_loss"] for r in runs.values()], "o", label="measured")
        grid = np.geomspace(xs.min(), xs.max(), 100)
        ax.plot(grid, fit["E"] + fit["A"] * grid ** (-fit["alpha"]), "-",
                label=f"fit: {fit['E']:.2f} + {fit['A']:.3g} x^-{fit['alpha']:.2f}")
        ax.set_xscale("log")
        ax.set(xlabel=f"{label} (log scale)", ylabel="final val loss (nats / char)")
        ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
