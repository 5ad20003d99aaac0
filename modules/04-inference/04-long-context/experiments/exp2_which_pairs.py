"""Why does unscaled RoPE break past its trained length, and which rotating pairs must be slowed down?

Which pairs of q and k dimensions turn to angles they never saw in training, and does slowing only those
pairs fix it?

RoPE turns pair i of q and k by ``position x w_i`` with ``w_i = theta^(-2i/d)``. A pair whose wavelength
``2 pi / w_i`` is shorter than the 64 trained positions has turned all the way round during training; a
slower pair has not, and at 512 it turns to angles the model has never seen. First the arithmetic, for the
lesson's model (16 pairs, theta 1e4): each pair's wavelength, how far it turns over the trained window and
at 512, and how NTK and YaRN at factor 8 change its frequency. Then the test, with the same weights over
held-out windows of 512: slow down (interpolate by 8) only the slow pairs (wavelength > 64), only the fast
ones, all of them (linear interpolation), or YaRN's ramp between the two (its temperature left out, to
compare frequencies only) — and measure the loss inside the trained window and far past it.
"""

import math

import torch
from _common import (
    EVAL_LEN,
    FAR,
    INSIDE,
    SPANS,
    TRAIN_LEN,
    loss_per_position,
    scaling,
    smooth,
    span_mean,
    trained_model,
    val_windows,
    with_inv_freq,
)

from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.model.rope import rope_inv_freq

FACTOR = EVAL_LEN // TRAIN_LEN  # 8


def main(exp: Experiment) -> None:
    n_windows = exp.pick(full=96, quick=24, smoke=2)
    base, train_settings = trained_model(exp)
    d, theta = base.cfg.head_dim, base.cfg.rope_theta
    x, y = val_windows(n_windows)

    # ---- the arithmetic of angles ----
    inv, _ = rope_inv_freq(d, theta)
    ntk, _ = rope_inv_freq(d, theta, scaling("ntk", FACTOR))
    yarn, _ = rope_inv_freq(d, theta, scaling("yarn", FACTOR))
    wavelength = 2 * math.pi / inv
    slow = wavelength > TRAIN_LEN  # never completes a turn inside the trained window
    # how far each pair turns across the trained window, and across the long one with each scaling
    turns = {"trained": TRAIN_LEN / wavelength,
             "no scaling": EVAL_LEN / wavelength,
             f"linear x{FACTOR}": EVAL_LEN / wavelength / FACTOR,
             f"NTK x{FACTOR}": EVAL_LEN * ntk / (2 * math.pi),
             f"YaRN x{FACTOR}": EVAL_LEN * yarn / (2 * math.pi)}
    # a slow pair reaches angles it never saw when it turns further than across the trained window
    unseen = {name: (slow & (v > turns["trained"] * (1 + 1e-5))).tolist()
              for name, v in turns.items() if name != "trained"}
    exp.set_config(train=train_settings, train_length=TRAIN_LEN, eval_length=EVAL_LEN, factor=FACTOR, head_dim=d,
                   theta=theta, pairs=d // 2, slow_pairs=[i for i, s in enumerate(slow.tolist()) if s],
                   windows=n_windows)
    exp.metric("wavelength", wavelength.tolist())
    exp.metric("turns_at_largest_distance", {k: v.tolist() for k, v in turns.items()})
    exp.metric("pairs_with_unseen_angles", {k: sum(v) for k, v in unseen.items()})
    exp.table("pairs", ["pair", "wavelength (chars)", f"turns over {TRAIN_LEN} (trained)", f"turns over {EVAL_LEN}",
                        "unseen angles?",
                        f"NTK x{FACTOR}: frequency kept", f"YaRN x{FACTOR}: frequency kept"],
              [[i, wavelength[i].item(), turns["trained"][i].item(), turns["no scaling"][i].item(),
                "yes" if unseen["no scaling"][i] else "no", (ntk[i] / inv[i]).item(), (yarn[i] / inv[i]).item()]
               for i in range(d // 2)],
              caption=f"head_dim {d}, theta {theta:g}: pair i turns by position x theta^(-2i/{d}). \"Unseen\": the "
                      f"pair does not complete a turn across the {TRAIN_LEN} trained positions and turns further "
                      f"across {EVAL_LEN}. The last columns are the new frequency over the trained one (linear: "
                      f"1/{FACTOR} for every pair).")

    # ---- the test: slow down which pairs? ----
    plans = {"no scaling": inv,
             f"all pairs / {FACTOR} (linear)": inv / FACTOR,
             f"slow pairs / {FACTOR}": torch.where(slow, inv / FACTOR, inv),
             f"fast pairs / {FACTOR}": torch.where(slow, inv, inv / FACTOR),
             f"YaRN ramp x{FACTOR} (no temperature)": yarn}
    curves = {name: loss_per_position(with_inv_freq(base, f), x, y) for name, f in plans.items()}
    span = {name: {s: span_mean(c, s) for s in SPANS} for name, c in curves.items()}
    for name in curves:
        exp.log(f"{name}: " + ", ".join(f"{s}: {v:.3f}" for s, v in span[name].items()))
    exp.metric("loss_by_span", span)
    exp.metric("loss_per_position", {n: c.tolist() for n, c in curves.items()})
    none, all_, slow_, fast_, ramp = plans
    exp.table("split", ["frequencies", *(f"loss at {s}" for s in SPANS), "change at 1-64 vs no scaling"],
              [[n, *span[n].values(), span[n][INSIDE] - span[none][INSIDE]] for n in curves],
              caption=f"the same weights, rotation tables built from the frequencies named (slow: the "
                      f"{int(slow.sum())} pairs with wavelength > {TRAIN_LEN}; fast: the other {int((~slow).sum())}); "
                      f"mean loss (nats / char) over {n_windows} held-out windows of {EVAL_LEN}.")

    inside = {n: span[n][INSIDE] for n in curves}
    far = {n: span[n][FAR] for n in curves}
    n_unseen = {name: sum(v) for name, v in unseen.items()}
    exp.finding(f"Without scaling, every slow pair (wavelength > {TRAIN_LEN}) turns to unseen angles across "
                f"{EVAL_LEN}, and most pairs are slow", n_unseen["no scaling"] == int(slow.sum()) > (d // 2) / 2,
                slow_pairs=int(slow.sum()), pairs=d // 2, unseen=n_unseen["no scaling"])
    ntk_, yarn_, linear_ = (f"{k} x{FACTOR}" for k in ("NTK", "YaRN", "linear"))
    exp.finding(f"NTK x{FACTOR} still turns some slow pairs to unseen angles across {EVAL_LEN}; YaRN x{FACTOR} and "
                f"linear x{FACTOR} turn none", n_unseen[ntk_] > 0 and n_unseen[yarn_] == n_unseen[linear_] == 0,
                ntk=n_unseen[ntk_], yarn=n_unseen[yarn_], linear=n_unseen[linear_])
    exp.finding(f"Slowing only the slow pairs lowers the loss at {FAR} below no scaling", far[slow_] < far[none],
                no_scaling=far[none], slow_only=far[slow_])
    exp.finding(f"Slowing only the fast pairs does not: its loss at {FAR} is no better than no scaling",
                far[fast_] >= far[none], no_scaling=far[none], fast_only=far[fast_])
    exp.finding(f"The price inside the trained window comes from the fast pairs: slowing only the slow ones costs "
                f"under a tenth of what slowing all pairs costs at {INSIDE}",
                inside[slow_] - inside[none] < 0.1 * (inside[all_] - inside[none]),
                slow_only=inside[slow_] - inside[none], all_pairs=inside[all_] - inside[none])
    exp.finding(f"YaRN's ramp (blending the pairs near the boundary) beats the hard slow/fast split at {FAR}",
                far[ramp] < far[slow_], ramp=far[ramp], slow_only=far[slow_])

    fig, axes = figure(2)
    ax = axes[0][0]
    pairs = list(range(d // 2))
    ax.plot(pairs, turns["trained"].tolist(), "k-", lw=2, label=f"across the trained {TRAIN_LEN} positions")
    for i, (name, t) in enumerate(turns.items()):
        if name != "trained":
            ax.plot(pairs, t.tolist(), "o--", ms=4, color=f"C{i}", label=f"{name}, across {EVAL_LEN}")
    ax.axhline(1, color="gray", ls=":", label="one full turn")
    ax.set_yscale("log")
    ax.set(xlabel="pair i (fast -> slow)", ylabel="rotation across the window (turns, log)",
           title="above the black line and below one turn: unseen angles")
    ax.legend(fontsize=7)
    ax = axes[0][1]
    for i, (name, c) in enumerate(curves.items()):
        ax.plot(range(1, EVAL_LEN + 1), smooth(c), label=name, color=f"C{i}")
    ax.axvline(TRAIN_LEN, color="gray", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="position (log)", ylabel="loss (nats / char, 8-position moving average)",
           title="which pairs to slow down", ylim=(1.0, math.log(65) + 0.3))
    ax.legend(fontsize=7)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
