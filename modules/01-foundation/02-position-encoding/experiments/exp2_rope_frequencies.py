"""What does each pair of dimensions "see" in RoPE, and why are there many frequencies instead of one?

RoPE turns dimension pair i by angle p * theta^(-2i/d) at position p. With MiniMind's settings
(head_dim 64, theta 1e6) we plot the wavelength of every pair — the number of positions per full
turn — against the context length. Then we ask what a *single* low frequency would do: how many of
the first positions it can tell apart when cos and sin are stored in float32 (as the model does).
"""

import math

import torch

from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.model.rope import rope_inv_freq


def distinct_positions(freq: float, n: int, dtype: torch.dtype, cos_only: bool = False) -> int:
    """How many of positions 0..n-1 get a distinct (cos, sin) pair (or cos value) at this frequency
    and precision."""
    p = torch.arange(n, dtype=torch.float64)
    angles = (p * freq).to(dtype)
    if cos_only:
        return len(set(angles.cos().tolist()))
    pairs = torch.stack([angles.cos(), angles.sin()], dim=1)
    return len({tuple(row) for row in pairs.tolist()})


def main(exp: Experiment) -> None:
    head_dim = 64
    thetas = [1e4, 1e6]
    n = exp.pick(full=32768, quick=4096, smoke=256)
    exp.set_config(head_dim=head_dim, thetas=thetas, positions=n)
    wavelengths = {}
    for theta in thetas:
        inv_freq, _ = rope_inv_freq(head_dim, theta)
        wavelengths[theta] = (2 * math.pi / inv_freq.double()).tolist()
    exp.metric("wavelengths", {f"theta={t:g}": w for t, w in wavelengths.items()})
    w6 = wavelengths[1e6]
    exp.table("wavelengths", ["theta", "shortest wavelength (positions)", "longest wavelength (positions)",
                              "pairs with wavelength > 512", "pairs with wavelength > 32768"],
              [[f"{t:g}", min(w), max(w), sum(x > 512 for x in w), sum(x > 32768 for x in w)]
               for t, w in wavelengths.items()], caption=f"head_dim {head_dim}: {head_dim // 2} pairs.")
    slow = float(rope_inv_freq(head_dim, 1e6)[0][-1])
    counts = {str(dtype).replace("torch.", ""): distinct_positions(slow, n, dtype)
              for dtype in (torch.float32, torch.float64)}
    cos_counts = {str(dtype).replace("torch.", ""): distinct_positions(slow, n, dtype, cos_only=True)
                  for dtype in (torch.float32, torch.float64)}
    exp.metric("single_low_frequency", {"frequency": slow, "positions": n, "distinct": counts,
                                        "distinct_cos": cos_counts})
    exp.table("single_frequency", ["precision", "positions", f"distinct (cos, sin) at frequency {slow:.3g}",
                                   "distinct cos values"],
              [[k, n, v, cos_counts[k]] for k, v in counts.items()])
    exp.finding("With theta 1e6, the slowest pair's wavelength is longer than MiniMind's 32768-token context",
                max(w6) > 32768, longest=max(w6))
    exp.finding("A larger theta stretches the slowest wavelength: theta 1e4's longest is shorter than theta 1e6's",
                max(wavelengths[1e4]) < max(w6),
                longest_1e4=max(wavelengths[1e4]), longest_1e6=max(w6))
    exp.finding(f"A single low frequency in float32 cannot tell all {n} positions apart",
                counts["float32"] < n, distinct_float32=counts["float32"], distinct_float64=counts["float64"])
    exp.finding("Its cosine alone collapses in float32 (many positions share one cos value)",
                cos_counts["float32"] < n, distinct_cos_float32=cos_counts["float32"],
                distinct_cos_float64=cos_counts["float64"])

    fig, axes = figure()
    ax = axes[0][0]
    for theta, w in wavelengths.items():
        ax.semilogy(range(len(w)), w, "o-", markersize=3, label=f"theta = {theta:g}")
    for ctx, style in ((512, ":"), (32768, "--")):
        ax.axhline(ctx, color="gray", linestyle=style, label=f"{ctx} tokens")
    ax.set(xlabel="dimension pair i", ylabel="wavelength (positions per full turn)",
           title=f"RoPE wavelengths, head_dim {head_dim}")
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
