"""LayerNorm or RMSNorm: what differs in the outputs, the parameters and the speed?

LayerNorm subtracts the mean and divides by the standard deviation, then scales and shifts
(2C parameters); RMSNorm only divides by the root mean square and scales (C parameters). We feed
both the same inputs (with a non-zero mean, as real hidden states have), compare output statistics,
and time forward + backward side by side (interleaved repeats, medians) for ``nn.LayerNorm`` (one
fused kernel), mmlab's ``RMSNorm`` (a few elementwise ops) and ``torch.nn.functional.rms_norm``.
"""

import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.model.norm import RMSNorm


class TorchRMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, 1e-5)


def time_fwd_bwd(modules: dict, x: torch.Tensor, repeats: int) -> dict:
    times = {name: [] for name in modules}
    for _ in range(3):
        for m in modules.values():
            m(x).sum().backward()
    for _ in range(repeats):  # interleaved, so drift in machine load hits every variant alike
        for name, m in modules.items():
            xi = x.detach().requires_grad_()
            t = time.perf_counter()
            m(xi).sum().backward()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) * 1e6 for name, ts in times.items()}


def main(exp: Experiment) -> None:
    shapes = exp.pick(full=[(12, 64, 128), (8, 256, 512), (4, 512, 1024)], quick=[(12, 64, 128), (8, 256, 512)],
                      smoke=[(2, 8, 16)])
    repeats = exp.pick(full=200, quick=30, smoke=2)
    exp.set_config(shapes=shapes, repeats=repeats, eps=1e-5, threads=torch.get_num_threads())

    torch.manual_seed(exp.seed)
    C = 512
    x = torch.randn(64, C) * 2.0 + 3.0  # hidden states have a non-zero mean
    ln, rms = nn.LayerNorm(C), RMSNorm(C)
    with torch.no_grad():
        y_ln, y_rms = ln(x), rms(x)
    stats = {
        name: {"mean": y.mean(-1).mean().item(), "std": y.std(-1).mean().item(),
               "rms": y.pow(2).mean(-1).sqrt().mean().item()}
        for name, y in (("input", x), ("LayerNorm", y_ln), ("RMSNorm", y_rms))
    }
    exp.metric("output_stats", stats)
    exp.table("stats", ["tensor", "mean of a row", "std of a row", "rms of a row"],
              [[k, v["mean"], v["std"], v["rms"]] for k, v in stats.items()],
              caption="Input rows: N(3, 2^2) over 512 features; statistics averaged over 64 rows.")
    params = {"LayerNorm": sum(p.numel() for p in ln.parameters()), "RMSNorm": sum(p.numel() for p in rms.parameters())}
    exp.metric("params", params)

    speed = {}
    for shape in shapes:
        C = shape[-1]
        modules = {"nn.LayerNorm": nn.LayerNorm(C), "mmlab RMSNorm": RMSNorm(C), "F.rms_norm": TorchRMSNorm(C)}
        xi = torch.randn(*shape)
        speed["x".join(map(str, shape))] = time_fwd_bwd(modules, xi, repeats)
        exp.log(f"{shape}: " + ", ".join(f"{k} {v:.0f} us" for k, v in speed["x".join(map(str, shape))].items()))
    exp.metric("fwd_bwd_us", speed)
    exp.table("speed", ["input shape", "nn.LayerNorm (us)", "mmlab RMSNorm (us)", "F.rms_norm (us)",
                        "RMSNorm / LayerNorm"],
              [[s, v["nn.LayerNorm"], v["mmlab RMSNorm"], v["F.rms_norm"], v["mmlab RMSNorm"] / v["nn.LayerNorm"]]
               for s, v in speed.items()],
              caption=f"Median of {repeats} interleaved forward + backward passes, {torch.get_num_threads()} threads.")

    exp.finding("LayerNorm outputs have mean ~0 and std ~1 per row (|mean| < 0.01, |std - 1| < 0.01)",
                abs(stats["LayerNorm"]["mean"]) < 0.01 and abs(stats["LayerNorm"]["std"] - 1) < 0.01,
                mean=stats["LayerNorm"]["mean"], std=stats["LayerNorm"]["std"])
    exp.finding("RMSNorm keeps the input's mean direction: output rms ~1 but row mean far from 0 (> 0.5)",
                abs(stats["RMSNorm"]["rms"] - 1) < 0.01 and stats["RMSNorm"]["mean"] > 0.5,
                rms=stats["RMSNorm"]["rms"], mean=stats["RMSNorm"]["mean"])
    exp.finding("RMSNorm has half the parameters of LayerNorm", params["RMSNorm"] * 2 == params["LayerNorm"],
                rmsnorm=params["RMSNorm"], layernorm=params["LayerNorm"])
    ratios = [v["mmlab RMSNorm"] / v["nn.LayerNorm"] for v in speed.values()]
    exp.finding("mmlab's RMSNorm (unfused, in PyTorch ops) is faster than the fused nn.LayerNorm at every shape",
                all(r < 1 for r in ratios), slowest_ratio=max(ratios), fastest_ratio=min(ratios))

    fig, axes = figure()
    ax = axes[0][0]
    labels = list(speed)
    for i, name in enumerate(["nn.LayerNorm", "mmlab RMSNorm", "F.rms_norm"]):
        ax.bar([j + 0.27 * (i - 1) for j in range(len(labels))], [speed[s][name] for s in labels], width=0.27,
               label=name)
    ax.set_xticks(range(len(labels)), labels)
    ax.set(xlabel="input shape (batch x tokens x features)", ylabel="forward + backward time (us, median)",
           title="normalization speed on this CPU")
    ax.set_yscale("log")
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
