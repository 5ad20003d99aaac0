"""How large should the scaling factor be, and what does YaRN's attention temperature do?

The lesson's RoPE model (trained on 64 characters, see ``_common.py``) read over held-out windows of 512
(8x), with linear interpolation, NTK-aware scaling and YaRN at factors 1, 2, 4, 8, 16 and 32 — too small,
matching and too large for the 8x window — and YaRN's frequencies without its attention temperature
(the cos/sin tables not multiplied by ``0.1 ln(factor) + 1``). For each: the mean loss inside the trained
window and far past it. Then the attention itself: the mean entropy of the attention weights (all layers
and heads) at both ends, for each scaling at factor 8 — interpolation crowds the keys into a smaller range
of angles and flattens attention; the temperature is there to sharpen it back.
"""

import math
from itertools import pairwise

import torch
from _common import (
    EVAL_LEN,
    FAR,
    INSIDE,
    SPANS,
    TRAIN_LEN,
    loss_per_position,
    scaling,
    sliding_loss_per_position,
    smooth,
    span_mean,
    trained_model,
    val_windows,
    with_inv_freq,
    with_rope,
)

from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.model.rope import rope_inv_freq

FACTORS = (1, 2, 4, 8, 16, 32)
RATIO = EVAL_LEN // TRAIN_LEN  # 8
KINDS = {"linear": "linear", "ntk": "NTK", "yarn": "YaRN", "yarn-no-temp": "YaRN, no temperature"}


def variant(base, kind: str, factor: int):
    if kind == "yarn-no-temp":  # YaRN's frequencies, attention factor 1
        inv_freq, _ = rope_inv_freq(base.cfg.head_dim, base.cfg.rope_theta, scaling("yarn", factor))
        return with_inv_freq(base, inv_freq, 1.0)
    return with_rope(base, scaling(kind, factor))


@torch.no_grad()
def attention_entropy(model, x: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the attention weights at each query position, over windows, layers, heads: (T,)."""
    total = torch.zeros(x.shape[1])
    for i in range(len(x)):
        out = model(x[i:i + 1], need_weights=True)
        for w in out.attentions:  # (1, H, T, T)
            total += -(w * w.clamp_min(1e-12).log()).sum(-1).mean((0, 1))
    return total / (len(x) * len(out.attentions))


def main(exp: Experiment) -> None:
    n_windows = exp.pick(full=96, quick=16, smoke=2)
    n_attn = exp.pick(full=8, quick=4, smoke=1)
    base, train_settings = trained_model(exp)
    x, y = val_windows(n_windows)
    exp.set_config(train=train_settings, train_length=TRAIN_LEN, eval_length=EVAL_LEN, factors=list(FACTORS),
                   windows=n_windows, attention_windows=n_attn,
                   yarn_attention_factor={f: 0.1 * math.log(f) + 1 for f in FACTORS})

    plain = loss_per_position(with_rope(base, None), x, y)
    sliding = sliding_loss_per_position(with_rope(base, None), x, y)
    loss = {k: {} for k in KINDS}  # kind -> factor -> span -> loss
    for kind in KINDS:
        for f in FACTORS:
            c = loss_per_position(variant(base, kind, f), x, y)
            loss[kind][f] = {s: span_mean(c, s) for s in SPANS}
        exp.log(f"{KINDS[kind]}: " + ", ".join(f"x{f} {loss[kind][f][INSIDE]:.3f}/{loss[kind][f][FAR]:.3f}"
                                              for f in FACTORS))
    exp.metric("loss_by_span", {KINDS[k]: {f"x{f}": v for f, v in d.items()} for k, d in loss.items()})
    exp.metric("no_scaling", {s: span_mean(plain, s) for s in SPANS})
    exp.metric("sliding_window", {s: span_mean(sliding, s) for s in SPANS})
    exp.table("factors", ["scaling", "factor", *(f"loss at {s}" for s in SPANS)],
              [[KINDS[k], f, *loss[k][f].values()] for k in KINDS for f in FACTORS],
              caption=f"mean loss (nats / char) over {n_windows} held-out windows of {EVAL_LEN}; trained on "
                      f"{TRAIN_LEN}. Factor 1 is no scaling; factor {RATIO} maps {EVAL_LEN} positions onto the "
                      f"trained {TRAIN_LEN}. For reference, without scaling: {span_mean(plain, INSIDE):.3f} at "
                      f"{INSIDE} and {span_mean(plain, FAR):.3f} at {FAR}; a {TRAIN_LEN}-character sliding "
                      f"window: {span_mean(sliding, FAR):.3f} at {FAR}.")

    # ---- attention entropy at factor RATIO ----
    ent = {"no scaling": attention_entropy(with_rope(base, None), x[:n_attn])}
    for kind in KINDS:
        ent[f"{KINDS[kind]} x{RATIO}"] = attention_entropy(variant(base, kind, RATIO), x[:n_attn])
    ent_span = {n: {s: span_mean(e, s) for s in (INSIDE, FAR)} for n, e in ent.items()}
    exp.metric("attention_entropy", ent_span)
    loss_at = {"no scaling": {s: span_mean(plain, s) for s in SPANS},
               **{f"{KINDS[k]} x{RATIO}": loss[k][RATIO] for k in KINDS}}
    exp.table("attention", ["scaling", f"attention entropy at {INSIDE}", f"at {FAR}", f"loss at {INSIDE}",
                            f"loss at {FAR}"],
              [[n, ent_span[n][INSIDE], ent_span[n][FAR], loss_at[n][INSIDE], loss_at[n][FAR]] for n in ent],
              caption=f"entropy (nats) of the attention weights of each query, mean over the 4 layers x 4 heads "
                      f"and {n_attn} windows (a uniform spread over k keys has entropy ln k); losses as in the table "
                      "above.")

    # ---- findings ----
    inside = {k: [loss[k][f][INSIDE] for f in FACTORS] for k in KINDS}
    far = {k: {f: loss[k][f][FAR] for f in FACTORS} for k in KINDS}
    rises = {k: sum(a < b for a, b in pairwise(inside[k])) for k in KINDS}  # factor steps where the loss went up
    scaled = ("linear", "ntk", "yarn")
    exp.finding("For linear, NTK and YaRN alike, a larger factor costs more inside the trained window (the loss at "
                f"{INSIDE} rises with every step from 1 to 32)",
                all(rises[k] == len(FACTORS) - 1 for k in scaled), steps=len(FACTORS) - 1,
                **{f"{KINDS[k]}_steps_up": rises[k] for k in scaled},
                **{f"{KINDS[k]}_x{FACTORS[-1]}_minus_x1": inside[k][-1] - inside[k][0] for k in scaled})
    best_yarn = min(FACTORS, key=far["yarn"].get)
    exp.finding(f"YaRN's loss at {FAR} is lowest at the factor that matches the length ratio ({RATIO})",
                best_yarn == RATIO, best_factor=best_yarn, **{f"x{f}": far["yarn"][f] for f in FACTORS})
    best_ntk = min(FACTORS, key=far["ntk"].get)
    exp.finding(f"NTK needs a factor above the length ratio: its loss at {FAR} is lowest at a factor > {RATIO}",
                best_ntk > RATIO, best_factor=best_ntk, **{f"x{f}": far["ntk"][f] for f in FACTORS})
    exp.finding(f"Under-scaling leaves the far end broken: YaRN x2 (covering {2 * TRAIN_LEN} positions) is worse at "
                f"{FAR} than YaRN x{RATIO}", far["yarn"][2] > far["yarn"][RATIO], x2=far["yarn"][2],
                **{f"x{RATIO}": far["yarn"][RATIO]})
    yarn, no_temp, none = f"YaRN x{RATIO}", f"YaRN, no temperature x{RATIO}", "no scaling"
    exp.finding(f"Interpolation flattens attention: YaRN's frequencies without the temperature raise the attention "
                f"entropy at {INSIDE} above no scaling", ent_span[no_temp][INSIDE] > ent_span[none][INSIDE],
                no_scaling=ent_span[none][INSIDE], yarn_no_temperature=ent_span[no_temp][INSIDE])
    exp.finding(f"The temperature sharpens it back: YaRN's entropy is below YaRN-without-temperature's at both "
                f"{INSIDE} and {FAR}", all(ent_span[yarn][s] < ent_span[no_temp][s] for s in (INSIDE, FAR)),
                **{f"yarn_{s}": ent_span[yarn][s] for s in (INSIDE, FAR)},
                **{f"no_temperature_{s}": ent_span[no_temp][s] for s in (INSIDE, FAR)})
    exp.finding(f"At factor {RATIO}, the temperature lowers YaRN's loss at {FAR}",
                far["yarn"][RATIO] < far["yarn-no-temp"][RATIO], yarn=far["yarn"][RATIO],
                no_temperature=far["yarn-no-temp"][RATIO])

    fig, axes = figure(3, width=5.2)
    color = {k: f"C{i + 1}" for i, k in enumerate(KINDS)}  # C0: no scaling
    for col, span in enumerate((INSIDE, FAR)):
        ax = axes[0][col]
        for k in KINDS:
            label = KINDS[k] + (" (leaves the plot)" if k == "linear" else "")
            ax.plot(FACTORS, [loss[k][f][span] for f in FACTORS], marker="o", color=color[k], label=label,
                    ls="--" if k == "yarn-no-temp" else "-")
        ax.axhline(span_mean(sliding, span), color="gray", ls=":", label=f"sliding window ({TRAIN_LEN})")
        ax.axvline(RATIO, color="gray", lw=1)
        shown = [loss[k][f][span] for k in KINDS if k != "linear" for f in FACTORS] + [span_mean(sliding, span)]
        ax.set_ylim(min(shown) - 0.05, max(shown) + 0.1)  # linear interpolation is far above: clipped
        ax.set_xscale("log", base=2)
        ax.set_xticks(FACTORS, [str(f) for f in FACTORS])
        ax.set(xlabel="scaling factor (log)", ylabel="loss (nats / char)", title=f"positions {span}")
        ax.legend(fontsize=7)
    ax = axes[0][2]
    for i, (n, e) in enumerate(ent.items()):
        ax.plot(range(1, EVAL_LEN + 1), smooth(e), label=n, color=f"C{i}", lw=1)
    ax.plot(range(1, EVAL_LEN + 1), [math.log(p) for p in range(1, EVAL_LEN + 1)], color="gray", ls=":",
            label="uniform: ln(position)")
    ax.axvline(TRAIN_LEN, color="gray", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="query position (log)", ylabel="attention entropy (nats, 8-position average)",
           title=f"attention, factor {RATIO}")
    ax.legend(fontsize=7)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
