"""Where does a RoPE model trained on 64 characters break at 512, and what do linear, NTK and YaRN fix and cost?

One model (the position-encoding lesson's RoPE model, see ``_common.py``), the same weights read five ways
over the same held-out windows of 512 characters (8x the trained length): as trained; with linear position
interpolation, NTK-aware scaling and YaRN, each with factor 8 and applied only at inference (they change
the rotation tables, not a weight); and through a 64-character sliding window — the model never sees a
position it was not trained on, nor any character more than 63 back. The loss at every position shows
where each reading breaks; the first 64 positions show what each scaling costs where nothing was broken;
the sliding window is the bar a scaling must clear for the longer context to be worth anything.
"""

import math

from _common import (
    EVAL_LEN,
    FAR,
    INSIDE,
    SPANS,
    STRIDE,
    TRAIN_LEN,
    loss_per_position,
    scaling,
    sliding_loss_per_position,
    smooth,
    span_mean,
    trained_model,
    val_windows,
    with_rope,
)

from mmlab.lab import Experiment
from mmlab.lab.plots import figure

FACTOR = EVAL_LEN // TRAIN_LEN  # 8: the scaling that maps 512 positions onto the trained 64
SCALED = {"linear": f"linear x{FACTOR}", "ntk": f"NTK x{FACTOR}", "yarn": f"YaRN x{FACTOR}"}
SLIDING = f"sliding window ({TRAIN_LEN})"


def main(exp: Experiment) -> None:
    n_windows = exp.pick(full=96, quick=24, smoke=2)
    base, train_settings = trained_model(exp)
    x, y = val_windows(n_windows)
    exp.set_config(train=train_settings, train_length=TRAIN_LEN, eval_length=EVAL_LEN, factor=FACTOR,
                   windows=n_windows, sliding_window={"window": TRAIN_LEN, "stride": STRIDE},
                   scalings={name: str(scaling(kind, FACTOR)) for kind, name in SCALED.items()})

    curves = {"no scaling": loss_per_position(with_rope(base, None), x, y)}
    for kind, name in SCALED.items():
        curves[name] = loss_per_position(with_rope(base, scaling(kind, FACTOR)), x, y)
    curves[SLIDING] = sliding_loss_per_position(with_rope(base, None), x, y)
    span = {name: {s: span_mean(c, s) for s in SPANS} for name, c in curves.items()}
    for name in curves:
        exp.log(f"{name}: " + ", ".join(f"{s}: {v:.3f}" for s, v in span[name].items()))
    exp.metric("loss_per_position", {name: c.tolist() for name, c in curves.items()})
    exp.metric("loss_by_span", span)
    plain = span["no scaling"]
    exp.table("by_position", ["reading", *(f"loss at {s}" for s in SPANS), "change at 1-64 vs no scaling"],
              [[name, *span[name].values(), span[name][INSIDE] - plain[INSIDE]] for name in curves],
              caption=f"mean next-character loss (nats) over {n_windows} held-out windows of {EVAL_LEN}; the model "
                      f"was trained on windows of {TRAIN_LEN}. The scalings change only the rotation tables "
                      f"(factor {FACTOR}, original length {TRAIN_LEN}); the sliding window reads chunks of "
                      f"{TRAIN_LEN} every {STRIDE} positions, so each prediction sees {TRAIN_LEN - STRIDE}-"
                      f"{TRAIN_LEN - 1} earlier characters.")

    far = {name: span[name][FAR] for name in curves}
    inside = {name: span[name][INSIDE] for name in curves}
    scaled = list(SCALED.values())
    exp.finding(f"Without scaling, the loss at positions {FAR} is more than 0.2 nats above the loss inside the "
                f"trained window ({INSIDE})", far["no scaling"] > inside["no scaling"] + 0.2,
                inside=inside["no scaling"], far=far["no scaling"])
    for name in scaled:
        exp.finding(f"{name} lowers the loss at {FAR} below no scaling", far[name] < far["no scaling"],
                    no_scaling=far["no scaling"], **{name: far[name]})
    exp.finding(f"Scaling is not free: each of the three raises the loss inside the trained window ({INSIDE})",
                all(inside[n] > inside["no scaling"] for n in scaled), no_scaling=inside["no scaling"],
                **{n: inside[n] for n in scaled})
    exp.finding("Linear interpolation costs the most inside the trained window (it also slows the fast pairs)",
                max(scaled, key=inside.get) == SCALED["linear"],
                **{n: inside[n] - inside["no scaling"] for n in scaled})
    best = min(scaled, key=far.get)
    exp.finding(f"YaRN has the lowest loss at {FAR} of the three scalings", best == SCALED["yarn"],
                **{n: far[n] for n in scaled})
    exp.finding(f"The best scaling beats a {TRAIN_LEN}-character sliding window at {FAR}: without fine-tuning, the "
                "longer context already helps", far[best] < far[SLIDING], best=best, best_loss=far[best],
                sliding_window=far[SLIDING])

    fig, axes = figure(2)
    ax = axes[0][0]
    pos = list(range(1, EVAL_LEN + 1))
    for i, (name, c) in enumerate(curves.items()):
        ax.plot(pos, smooth(c), label=name, color=f"C{i}", ls=":" if name == SLIDING else "-")
    ax.axvline(TRAIN_LEN, color="gray", ls="--", lw=1, label="trained length")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="position in the window (log scale)", ylabel="loss (nats / char, 8-position moving average)",
           title=f"trained at {TRAIN_LEN}, read at {EVAL_LEN}", ylim=(1.0, math.log(65) + 0.3))
    ax.legend(fontsize=8)
    ax = axes[0][1]
    for i, (name, c) in enumerate(curves.items()):
        if name in scaled:
            diff = (c[:TRAIN_LEN] - curves["no scaling"][:TRAIN_LEN]).tolist()
            ax.plot(range(1, TRAIN_LEN + 1), smooth(diff, 4), label=name, color=f"C{i}")
    ax.axhline(0, color="gray", lw=1)
    ax.set(xlabel="position (inside the trained window)", ylabel="loss - loss without scaling (4-position average)",
           title="the price inside the trained window")
    ax.legend(fontsize=8)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
