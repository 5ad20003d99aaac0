"""Where does quantization error come from: which layers, which rows, and how much do smaller groups help?

The lesson's trained model (see ``_common.py``); every linear layer that ``quantize_model`` would
quantize (4 blocks x q, k, v, o, gate, up, down). With the library's ``quantize_tensor`` /
``dequantize_tensor`` we measure, per layer, the relative weight error ``||W - deq(q(W))|| / ||W||``
for int8 and int4 at group sizes from 8 to per-channel, and the layer's *outlier ratio* (the largest
|weight| over the mean |weight|). Per row (one output channel: what a per-channel scale sees) we compare
the measured int4 error with a rounding-noise model: a grid step of ``max|row| / 7`` and an error
uniform within half a step give a relative error of ``(max|row| / 7) / sqrt(12) / rms(row)`` — so the
error is set by how far the row's largest weight stands above its typical one. Finally, each layer
type alone is quantized to int4 per-channel and the held-out loss change measured: which layers matter.
"""

import copy
import math
from itertools import pairwise

import torch
from _common import trained_model, val_loss, val_tokens

from mmlab.infer.quant import DEFAULT_SKIP, dequantize_tensor, quantize_model, quantize_tensor
from mmlab.lab import Experiment
from mmlab.lab.plots import figure

TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def rel_error(w: torch.Tensor, bits: int, group: int | None) -> torch.Tensor:
    """Per-row relative error ||w - deq(q(w))|| / ||w|| of one weight (out, in) -> (out,)."""
    q, scales = quantize_tensor(w, bits, group)
    err = w - dequantize_tensor(q, scales, bits)
    return err.norm(dim=1) / w.norm(dim=1)


def spearman(a: list[float], b: list[float]) -> float:
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    return torch.corrcoef(torch.stack([ra, rb]))[0, 1].item()


def main(exp: Experiment) -> None:
    n_eval = exp.pick(full=16_384, quick=2048, smoke=256)
    base, train_settings = trained_model(exp)
    layers = {n: m.weight.detach() for n, m in base.named_modules()
              if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] not in DEFAULT_SKIP}
    groups = [8, 16, 32, 64, 128, None]  # None: one scale per row (per-channel)
    exp.set_config(train=train_settings, layers=len(layers), group_sizes=[g or "per-channel" for g in groups],
                   eval_tokens=n_eval)

    # ---- error against group size, per layer ----
    err = {bits: {g: {} for g in groups} for bits in (8, 4)}
    for name, w in layers.items():
        for bits in (8, 4):
            for g in groups:
                if g is None or w.shape[1] % g == 0:
                    e = w - dequantize_tensor(*quantize_tensor(w, bits, g), bits)
                    err[bits][g][name] = (e.norm() / w.norm()).item()
    mean_err = {bits: {g: sum(d.values()) / len(d) for g, d in by_g.items()} for bits, by_g in err.items()}
    label = {g: f"g{g}" if g else "per-channel" for g in groups}
    exp.metric("mean_relative_error", {f"int{b}": {label[g]: v for g, v in d.items()} for b, d in mean_err.items()})
    exp.table("group_size", ["group size", "int8 rel. error", "int4 rel. error", "stored bits / weight (int4)"],
              [[label[g], mean_err[8][g], mean_err[4][g], 4 + (32 / g if g else 0)] for g in groups],
              caption=f"relative weight error ||W - deq(q(W))|| / ||W||, mean over the {len(layers)} quantized layers; "
                      "the fp32 scales add 32/g bits per weight (per-channel: 32 per row, negligible).")

    # ---- outliers: per layer and per row ----
    outlier = {n: (w.abs().max() / w.abs().mean()).item() for n, w in layers.items()}
    row_ratio, row_err4, row_err4_g32, row_pred = [], [], [], []
    for w in layers.values():
        r = w.abs().amax(dim=1) / w.pow(2).mean(dim=1).sqrt()  # max / rms per row
        row_ratio += r.tolist()
        row_err4 += rel_error(w, 4, None).tolist()
        row_err4_g32 += rel_error(w, 4, 32).tolist()
        row_pred += (r / 7 / math.sqrt(12)).tolist()
    rho_rows = spearman(row_ratio, row_err4)
    rho_rows_g32 = spearman(row_ratio, row_err4_g32)
    ratio_pred = sorted(m / p for m, p in zip(row_err4, row_pred, strict=True))
    median_pred = ratio_pred[len(ratio_pred) // 2]
    rho_layers = spearman([outlier[n] for n in layers], [err[4][None][n] for n in layers])
    exp.metric("row_spearman", {"int4 per-channel": rho_rows, "int4 g32": rho_rows_g32})
    exp.metric("layer_spearman_outlier_vs_int4_error", rho_layers)
    exp.metric("median_measured_over_predicted", median_pred)

    # ---- by layer type, and the loss when only that type is int4 per-channel ----
    tokens = val_tokens(n_eval)
    base_loss = val_loss(base, tokens)
    by_type, loss_change = [], {}
    for t in TYPES:
        names = [n for n in layers if n.endswith(t)]
        model = copy.deepcopy(base)
        quantize_model(model, 4, None, skip=[*DEFAULT_SKIP, *(x for x in TYPES if x != t)])
        loss_change[t] = val_loss(model, tokens) - base_loss
        mean = lambda d, names=names: sum(d[n] for n in names) / len(names)  # noqa: E731
        by_type.append([t, mean(outlier), mean(err[8][None]), mean(err[4][None]), mean(err[4][32]), loss_change[t]])
        exp.log(f"{t}: outlier {by_type[-1][1]:.1f}, int4 error {by_type[-1][3]:.3f}, "
                f"loss change {loss_change[t]:+.4f}")
    exp.metric("loss_change_int4_per_channel_by_type", loss_change)
    exp.metric("fp32_val_loss", base_loss)
    exp.table("layer_types", ["layer", "max / mean abs weight", "int8 rel. error", "int4 rel. error",
                              "int4 g32 rel. error", "val loss change, only this type int4"], by_type,
              caption=f"means over the 4 blocks; the last column quantizes only that layer type to int4 "
                      f"per-channel and measures {n_eval:,} held-out characters against fp32.")

    # ---- findings ----
    e4 = [mean_err[4][g] for g in groups]
    exp.finding("int4 weight error falls at every step from per-channel down to groups of 8",
                all(a < b for a, b in pairwise(e4)), **{label[g]: mean_err[4][g] for g in groups})
    exp.finding("int8 per-channel has a smaller weight error than int4 at the smallest group (8)",
                mean_err[8][None] < mean_err[4][8], int8_per_channel=mean_err[8][None], int4_g8=mean_err[4][8])
    exp.finding("With one scale per row, a row's int4 error follows its max/rms ratio (Spearman > 0.8 over rows)",
                rho_rows > 0.8, spearman=rho_rows, rows=len(row_ratio))
    exp.finding("Groups of 32 weaken that link: the row ratio predicts the g32 error less well than the "
                "per-channel error", rho_rows_g32 < rho_rows, per_channel=rho_rows, g32=rho_rows_g32)
    exp.finding("The rounding-noise model (max/7 step, uniform error) predicts the per-channel int4 error within "
                "20% (median over rows)", abs(median_pred - 1) < 0.2, median_measured_over_predicted=median_pred)
    exp.finding("Layers with a larger max/mean ratio have a larger int4 per-channel error (Spearman > 0.5 over "
                "layers)", rho_layers > 0.5, spearman=rho_layers)
    worst_err = max(by_type, key=lambda r: r[3])[0]
    worst_loss = max(loss_change, key=loss_change.get)
    exp.finding("The layer type with the largest int4 weight error is also the one that costs the most loss when "
                "quantized alone", worst_err == worst_loss, largest_error=worst_err, largest_loss=worst_loss)

    fig, axes = figure(3)
    ax = axes[0][0]
    xs = [g or max(w.shape[1] for w in layers.values()) for g in groups]
    for i, bits in enumerate((8, 4)):
        ax.plot(xs, [mean_err[bits][g] for g in groups], "o-", color=f"C{i}", label=f"int{bits}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs, [label[g] for g in groups], fontsize=8)
    ax.set(xlabel="group size (inputs per scale)", ylabel="relative weight error (mean over layers)",
           title="error against group size")
    ax.legend()
    ax = axes[0][1]
    ax.scatter(row_ratio, row_err4, s=3, alpha=0.4, label="int4 per-channel")
    ax.scatter(row_ratio, row_err4_g32, s=3, alpha=0.4, label="int4 g32")
    lo, hi = min(row_ratio), max(row_ratio)
    ax.plot([lo, hi], [lo / 7 / math.sqrt(12), hi / 7 / math.sqrt(12)], "k--", lw=1, label="(max/7)/sqrt(12)/rms")
    ax.set(xlabel="row max |w| / rms(w)", ylabel="row relative error", title="outliers set the per-row error")
    ax.legend(fontsize=8, markerscale=3)
    ax = axes[0][2]
    for i, t in enumerate(TYPES):
        names = [n for n in layers if n.endswith(t)]
        ax.scatter([outlier[n] for n in names], [err[4][None][n] for n in names], color=f"C{i}", label=t, s=25)
    ax.set(xlabel="layer max |w| / mean |w|", ylabel="int4 per-channel relative error", title="by layer")
    ax.legend(fontsize=7)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
