"""Why divide the scores by sqrt(d_k)? Softmax saturation and gradient size as d_k grows, with and
without the scaling.

Queries and keys with unit-variance components (what a normalized input and a well-initialised
projection give) have dot products of variance d_k. We draw many (query, 64 keys) sets for
d_k = 4 ... 1024 and measure, with and without dividing by sqrt(d_k): the spread of the scores, the
largest softmax weight, the entropy of the weights, the share of rows that are almost one-hot, and the
size of the softmax's gradient (the Frobenius norm of its Jacobian diag(p) - p p^T).
"""

import math

import torch

from mmlab.lab import Experiment
from mmlab.lab.plots import figure

N_KEYS = 64


def stats(scores: torch.Tensor) -> dict[str, float]:
    p = torch.softmax(scores, dim=-1)
    jac = torch.diag_embed(p) - p[..., :, None] * p[..., None, :]
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
    return {
        "score_std": scores.std().item(),
        "max_weight": p.max(-1).values.mean().item(),
        "entropy": entropy.mean().item(),
        "saturated_share": (p.max(-1).values > 0.99).float().mean().item(),
        "jacobian_norm": torch.linalg.matrix_norm(jac).mean().item(),
        "jacobian_norm_median": torch.linalg.matrix_norm(jac).median().item(),
    }


def main(exp: Experiment) -> None:
    dims = exp.pick(full=[4, 16, 64, 256, 1024], quick=[4, 16, 64, 256, 1024], smoke=[4, 64])
    n = exp.pick(full=4000, quick=1000, smoke=50)
    exp.set_config(d_k=dims, n_keys=N_KEYS, samples=n, uniform_entropy=math.log(N_KEYS))
    g = torch.Generator().manual_seed(exp.seed)
    res: dict[str, dict[int, dict[str, float]]] = {"unscaled": {}, "scaled": {}}
    for d in dims:
        q = torch.randn(n, 1, d, generator=g, dtype=torch.float64)
        k = torch.randn(n, N_KEYS, d, generator=g, dtype=torch.float64)
        raw = (q @ k.transpose(1, 2))[:, 0]  # (n, keys)
        res["unscaled"][d] = stats(raw)
        res["scaled"][d] = stats(raw / math.sqrt(d))
        exp.log(f"d_k={d}: " + ", ".join(f"{v}: max w {res[v][d]['max_weight']:.3f}" for v in res))
    exp.metric("stats", res)
    rows = [
        [
            d,
            v,
            s["score_std"],
            s["max_weight"],
            s["entropy"],
            s["saturated_share"],
            s["jacobian_norm"],
            s["jacobian_norm_median"],
        ]
        for d in dims
        for v, s in ((v, res[v][d]) for v in res)
    ]
    exp.table(
        "saturation",
        [
            "d_k",
            "scores",
            "score std",
            "mean max weight",
            "entropy (nats)",
            "rows > 0.99 on one key",
            "Jacobian norm (mean)",
            "Jacobian norm (median)",
        ],
        rows,
        caption=f"{n} queries x {N_KEYS} keys per d_k, unit-variance components. "
        f"A uniform softmax over {N_KEYS} keys has entropy ln {N_KEYS} = {math.log(N_KEYS):.2f}.",
    )
    hi = dims[-1]
    ratios = [res["unscaled"][d]["score_std"] / math.sqrt(d) for d in dims]
    exp.finding(
        "Unscaled scores have a standard deviation of about sqrt(d_k) (ratio within 10% of 1 at every d_k)",
        all(abs(r - 1) < 0.1 for r in ratios),
        std_over_sqrt_dk=ratios,
    )
    ent = [res["scaled"][d]["entropy"] for d in dims]
    exp.finding(
        "With scaling, the entropy of the weights stays the same at every d_k (within 5%)",
        max(ent) / min(ent) < 1.05,
        entropy=ent,
    )
    u = res["unscaled"][hi]
    exp.finding(
        f"Without scaling, at d_k={hi} most rows are almost one-hot (max weight > 0.99)",
        u["saturated_share"] > 0.5,
        saturated_share=u["saturated_share"],
    )
    ratio = res["scaled"][hi]["jacobian_norm_median"] / max(u["jacobian_norm_median"], 1e-30)
    exp.finding(
        f"Without scaling, at d_k={hi} the typical (median) row's softmax gradient is over 10x smaller "
        "than with scaling",
        ratio > 10,
        scaled=res["scaled"][hi]["jacobian_norm_median"],
        unscaled=u["jacobian_norm_median"],
        ratio=ratio,
    )
    mean_ratio = res["scaled"][hi]["jacobian_norm"] / u["jacobian_norm"]
    exp.finding(
        f"Averaged over all rows the gradient is smaller too, but far less dramatically (mean ratio < 5x at d_k={hi}): "
        "the rows that are not yet saturated keep a normal gradient",
        1 < mean_ratio < 5,
        ratio=mean_ratio,
    )
    exp.metric("jacobian_ratio_at_largest_dk", {"median": ratio, "mean": mean_ratio})

    fig, axes = figure(3, 1, width=4.3, height=3.6)
    for key, ax, label in [
        ("max_weight", axes[0][0], "mean largest weight"),
        ("entropy", axes[0][1], "entropy of the weights (nats)"),
        ("jacobian_norm_median", axes[0][2], "softmax Jacobian norm (median row)"),
    ]:
        for v, style in (("unscaled", "o-"), ("scaled", "s-")):
            ax.plot(
                dims, [res[v][d][key] for d in dims], style, label=f"{v}" + (" (/ sqrt d_k)" if v == "scaled" else "")
            )
        ax.set_xscale("log", base=2)
        ax.set(xlabel="d_k (head dimension)", ylabel=label)
        if key == "entropy":
            ax.axhline(math.log(N_KEYS), color="gray", ls=":", label=f"uniform (ln {N_KEYS})")
        ax.legend()
    fig.suptitle(f"softmax over {N_KEYS} keys: q·k with and without 1/sqrt(d_k)")
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
