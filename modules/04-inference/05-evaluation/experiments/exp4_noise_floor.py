"""How many questions does a benchmark need before a difference means something?

Three measurements of the noise under every accuracy. (1) Guessers: on the real ARC-Easy items (3 to 5 choices
each), thousands of simulated guessers pick uniformly at random; how far their accuracies spread at 25 to all
2,376 items, how often one lands 5 points above chance, and how often the library's verdict (a z-test against
chance, ``mmlab.eval.stats.accuracy_vs_chance``) calls a guesser "above chance". (2) Intervals: the exact
coverage (binomial sums, no simulation) of the textbook Wald interval ``p ± 1.96 sqrt(p (1 - p) / n)`` and of
the Wilson interval the library reports (``wilson_interval``), for true accuracies from 1% to 50%. (3) Two real
models: the pretrained base and the SFT model (see ``_common.py``) on ARC-Easy, per-byte scoring: the 95%
interval of their difference treated as two separate samples (unpaired) and item by item (paired, plus a
paired bootstrap), and the number of items a difference of 1 to 10 points would need.
"""

import math

import numpy as np
from _common import lesson_models, model_settings, score_items, task_items

from mmlab.eval.stats import Z_95, accuracy_vs_chance, wilson_interval
from mmlab.lab import Experiment
from mmlab.lab.plots import figure

Z_80 = 0.8416  # one-sided z for 80% power: a true difference of this size is detected 4 times in 5


def binom_pmf(n: int, p: float) -> np.ndarray:
    k = np.arange(n + 1)
    logc = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in k])
    with np.errstate(divide="ignore"):
        return np.exp(logc + k * np.log(p) + (n - k) * np.log1p(-p))


def coverage(n: int, p: float, interval) -> float:
    """Exact probability that ``interval(k / n, n)`` holds the true ``p`` when k ~ Binomial(n, p)."""
    pmf = binom_pmf(n, p)
    return float(sum(w for k, w in enumerate(pmf) if interval(k / n, n)[0] <= p <= interval(k / n, n)[1]))


def wald(p: float, n: int) -> tuple[float, float]:
    half = Z_95 * math.sqrt(p * (1 - p) / n)
    return p - half, p + half


def main(exp: Experiment) -> None:
    n_guessers = exp.pick(full=4000, quick=2000, smoke=200)
    n_arc = exp.pick(full=None, quick=400, smoke=12)
    rng = np.random.default_rng(exp.seed)
    arc = task_items("arc-easy-test", None)
    chance_all = np.array([len(it.gold) / len(it.choices) for it in arc])
    sizes = [n for n in (25, 50, 100, 200, 400, 800, 1600) if n < len(arc)] + [len(arc)]
    grid_p, grid_n = (0.01, 0.02, 0.05, 0.1, 0.25, 0.5), (20, 50, 100, 400)
    exp.set_config(guessers=n_guessers, arc_items=len(arc), sizes=sizes, coverage_p=grid_p, coverage_n=grid_n,
                   models=model_settings(exp), model_items=n_arc or len(arc), scoring="per byte",
                   bootstrap=exp.pick(4000, 2000, 200), z=Z_95, power_z=Z_80)

    # ---- (1) guessers on the real items ----
    guess_rows, guess = [], {}
    for n in sizes:
        c = chance_all[:n]
        right = rng.random((n_guessers, n)) < c  # each guesser, each item: right with probability c_i
        accs = right.mean(axis=1)
        formula = math.sqrt(float((c * (1 - c)).sum())) / n
        called_above = sum(accuracy_vs_chance(row.astype(float).tolist(), c.tolist())["verdict"] == "above chance"
                           for row in right[:min(n_guessers, 500)]) / min(n_guessers, 500)
        guess[n] = {"chance": float(c.mean()), "spread_simulated": float(accs.std()), "spread_formula": formula,
                    "p2.5": float(np.quantile(accs, 0.025)), "p97.5": float(np.quantile(accs, 0.975)),
                    "share_5_points_above": float((accs >= c.mean() + 0.05 - 1e-12).mean()),
                    "share_called_above_chance": called_above,
                    "wilson_half_width_at_chance": (wilson_interval(float(c.mean()), n)[1]
                                                    - wilson_interval(float(c.mean()), n)[0]) / 2}
        g = guess[n]
        guess_rows.append([n, g["chance"], g["spread_simulated"], g["spread_formula"], f"{g['p2.5']:.3f}-"
                           f"{g['p97.5']:.3f}", g["share_5_points_above"], g["share_called_above_chance"]])
    exp.metric("guessers", guess)
    exp.table("guessers", ["items", "chance", "guessers' spread (sd)", "formula sqrt(sum c(1-c)) / n",
                           "middle 95% of guessers", "share 5+ points above chance",
                           "share the library calls above chance"], guess_rows,
              caption=f"{n_guessers:,} simulated uniform guessers on the first n ARC-Easy test items (3-5 choices; "
                      "chance = mean of 1 / choices); the verdict column checks the first 500 guessers.")

    # ---- (2) interval coverage, exact ----
    cov = {f"p={p} n={n}": {"wald": coverage(n, p, wald), "wilson": coverage(n, p, wilson_interval)}
           for p in grid_p for n in grid_n}
    exp.metric("coverage", cov)
    exp.table("coverage", ["true accuracy", *(f"n={n}: Wald" for n in grid_n), *(f"n={n}: Wilson" for n in grid_n)],
              [[p, *(cov[f"p={p} n={n}"]["wald"] for n in grid_n), *(cov[f"p={p} n={n}"]["wilson"] for n in grid_n)]
               for p in grid_p],
              caption="probability that a 95% interval computed from k ~ Binomial(n, p) contains p (exact sums over "
                      "k); 0.95 is what both promise.")

    # ---- (3) two real models, paired and unpaired ----
    models, tok = lesson_models(exp, ("base", "sft"))
    items = arc[:n_arc] if n_arc else arc
    recs = {name: score_items(m, tok, items) for name, m in models.items()}
    sft_of = {id(r["item"]): r for r in recs["sft"]}
    pairs = [(r, sft_of[id(r["item"])]) for r in recs["base"] if id(r["item"]) in sft_of]  # items both could score
    a = np.array([x["per byte"] for x, _ in pairs])
    b = np.array([y["per byte"] for _, y in pairs])
    same_pick = float(np.mean([x["picks"]["per byte"] == y["picks"]["per byte"] for x, y in pairs]))
    pair_rows, pair = [], {}
    n_boot = exp.pick(4000, 2000, 200)
    for n in [s for s in sizes if s < len(a)] + [len(a)]:
        x, y = a[:n], b[:n]
        d = y - x
        unpaired = Z_95 * math.sqrt(x.mean() * (1 - x.mean()) / n + y.mean() * (1 - y.mean()) / n)
        paired = Z_95 * d.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
        boots = d[rng.integers(0, n, (n_boot, n))].mean(axis=1)
        lo, hi = np.quantile(boots, [0.025, 0.975])
        pair[n] = {"base": float(x.mean()), "sft": float(y.mean()), "difference": float(d.mean()),
                   "unpaired_half_width": unpaired, "paired_half_width": paired,
                   "bootstrap_half_width": float(hi - lo) / 2, "bootstrap_interval": [float(lo), float(hi)]}
        pair_rows.append([n, float(d.mean()), unpaired, paired, float(hi - lo) / 2,
                          "yes" if lo <= 0 <= hi else "no"])
    exp.metric("base_vs_sft", pair)
    exp.metric("same_pick_share", same_pick)
    exp.table("paired", ["items", "SFT - base", "unpaired 95% half-width", "paired 95% half-width",
                         "paired bootstrap half-width", "0 inside the bootstrap interval"], pair_rows,
              caption=f"ARC-Easy, per-byte scoring; the two models pick the same choice on {same_pick:.0%} of "
                      "the items. In a paired comparison only the items where their credit differs carry noise.")

    # how many items a difference needs (95% two-sided, 80% power), against chance, unpaired and paired
    p0 = guess[sizes[-1]]["chance"]
    var_d = float(np.var(b - a, ddof=1))
    need = {}
    for pts in (1, 2, 5, 10):
        delta = pts / 100
        need[pts] = {"vs_chance": math.ceil(((Z_95 + Z_80) ** 2) * p0 * (1 - p0) / delta**2),
                     "two_models_unpaired": math.ceil(((Z_95 + Z_80) ** 2) * 2 * p0 * (1 - p0) / delta**2),
                     "two_models_paired": math.ceil(((Z_95 + Z_80) ** 2) * var_d / delta**2)}
    exp.metric("items_needed", need)
    exp.table("items_needed", ["difference (points)", "a model against chance", "two models, unpaired",
                               "two models, paired (like base and SFT)"],
              [[pts, v["vs_chance"], v["two_models_unpaired"], v["two_models_paired"]] for pts, v in need.items()],
              caption=f"items for a 95% test to detect the difference 80% of the time, at accuracy {p0:.2f} "
                      f"(ARC-Easy chance); paired: the variance of the item-by-item difference of base and SFT "
                      f"({var_d:.3f}). ARC-Easy has {len(arc):,} items, HellaSwag-100 100.")

    # ---- findings ----
    worst = max(abs(g["spread_simulated"] / g["spread_formula"] - 1) for g in guess.values())
    exp.finding("The guessers' spread matches the library's formula sqrt(sum c(1-c)) / n within 10% at every size",
                worst < 0.10, largest_relative_gap=worst)
    g100 = guess.get(100, guess[sizes[-1]])
    exp.finding("At 100 items (HellaSwag-100's size), more than 1 pure guesser in 20 scores 5 or more points above "
                "chance", g100["share_5_points_above"] > 0.05, share=g100["share_5_points_above"])
    fp = [g["share_called_above_chance"] for g in guess.values()]
    exp.finding("The library's verdict calls at most about 1 guesser in 20 'above chance' at every size (a 95% test)",
                max(fp) <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / 500), largest_share=max(fp))
    exp.finding("Wald's 95% interval covers a true accuracy of 1% less than half of the time with 50 items",
                cov["p=0.01 n=50"]["wald"] < 0.5, wald=cov["p=0.01 n=50"]["wald"],
                wilson=cov["p=0.01 n=50"]["wilson"])
    worst_wald = min(v["wald"] for v in cov.values())
    worst_wilson = min(v["wilson"] for v in cov.values())
    exp.finding("Over the whole grid, Wilson's worst coverage is far closer to 95% than Wald's",
                worst_wilson > worst_wald + 0.2, wilson=worst_wilson, wald=worst_wald)
    full = pair[len(a)]
    exp.finding("Pairing helps: the paired interval of SFT - base is narrower than the unpaired one",
                full["paired_half_width"] < full["unpaired_half_width"], paired=full["paired_half_width"],
                unpaired=full["unpaired_half_width"], same_pick=same_pick)
    exp.finding("The paired bootstrap agrees with the paired normal interval within 20%",
                abs(full["bootstrap_half_width"] / full["paired_half_width"] - 1) < 0.2,
                bootstrap=full["bootstrap_half_width"], normal=full["paired_half_width"])
    lo, hi = full["bootstrap_interval"]
    exp.finding("Even with every item scored, base and SFT are not distinguishable on ARC-Easy (0 is inside the "
                "paired 95% interval of their difference)", lo <= 0 <= hi, difference=full["difference"],
                low=lo, high=hi, items=len(a))

    # ---- figure ----
    fig, axes = figure(3, width=4.8)
    ax = axes[0][0]
    ns = list(guess)
    ax.fill_between(ns, [guess[n]["p2.5"] for n in ns], [guess[n]["p97.5"] for n in ns], alpha=0.3,
                    label="middle 95% of guessers")
    ax.plot(ns, [guess[n]["chance"] for n in ns], "k--", lw=1, label="chance")
    ax.plot(ns, [guess[n]["chance"] + 0.05 for n in ns], "r:", lw=1, label="chance + 5 points")
    ax.set_xscale("log")
    ax.set(xlabel="items (log)", ylabel="accuracy", title="a guesser's score on ARC-Easy")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    for i, n in enumerate(grid_n):
        ax.plot(grid_p, [cov[f"p={p} n={n}"]["wald"] for p in grid_p], "o--", color=f"C{i}", ms=3,
                label=f"Wald, n={n}")
        ax.plot(grid_p, [cov[f"p={p} n={n}"]["wilson"] for p in grid_p], "s-", color=f"C{i}", ms=3,
                label=f"Wilson, n={n}")
    ax.axhline(0.95, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set(xlabel="true accuracy (log)", ylabel="coverage of a 95% interval", title="Wald vs Wilson", ylim=(0, 1))
    ax.legend(fontsize=6, ncol=2)
    ax = axes[0][2]
    pn = list(pair)
    ax.plot(pn, [pair[n]["unpaired_half_width"] for n in pn], "o-", label="unpaired")
    ax.plot(pn, [pair[n]["paired_half_width"] for n in pn], "s-", label="paired")
    ax.plot(pn, [max(abs(pair[n]["difference"]), 1e-4) for n in pn], "k^:", label="|SFT - base| measured")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.minorticks_off()
    ax.set_xticks(pn, [f"{n:,}" for n in pn], fontsize=7)
    ax.set(xlabel="items (log)", ylabel="95% half-width of SFT - base (log)", title="two models on ARC-Easy")
    ax.legend(fontsize=8)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
