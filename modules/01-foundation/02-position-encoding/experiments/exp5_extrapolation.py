"""Can a model read beyond the context it was trained on?

We train with windows of 64 characters, then measure the loss at every position of 512-character
windows (8x the training length) for: RoPE as trained, RoPE with NTK-aware scaling and with YaRN
(factor 8, applied at inference only), ALiBi, learned positions (rows past 64 were never trained)
and no positions. The loss per position shows where each one breaks.
"""

import math

import torch

from mmlab.config import RopeScaling
from mmlab.lab import Experiment
from mmlab.lab.lm import batches, cached_train_lm, shakespeare_config
from mmlab.lab.plots import figure
from mmlab.model import MiniMindLM

TRAIN_LEN = 64


@torch.no_grad()
def loss_per_position(model, data, length: int, n_windows: int, seed: int) -> list[float]:
    model.eval()
    x, y = data.sample("val", n_windows, torch.Generator().manual_seed(seed))
    total = torch.zeros(length)
    for i in range(0, n_windows, 8):
        logits = model(x[i:i + 8]).logits
        total += torch.nn.functional.cross_entropy(logits.transpose(1, 2), y[i:i + 8], reduction="none").sum(0)
    return (total / n_windows).tolist()


def main(exp: Experiment) -> None:
    steps = exp.pick(full=800, quick=40, smoke=2)
    eval_len = exp.pick(full=512, quick=256, smoke=128)
    n_windows = exp.pick(full=96, quick=16, smoke=8)
    lr, factor = 2e-3, eval_len // TRAIN_LEN
    exp.set_config(train_length=TRAIN_LEN, eval_length=eval_len, steps=steps, lr=lr, scaling_factor=factor,
                   windows=n_windows)
    data = batches(eval_len, 8, 1)
    curves, trained = {}, {}
    for enc in ("rope", "alibi", "learned", "none"):
        cfg = shakespeare_config(pos_encoding=enc, max_seq_len=eval_len)
        # kept in the lab cache: the long-context lesson (04-inference/04-long-context) reads this RoPE model
        trained[enc] = cached_train_lm(cfg, steps, lr, cache=exp.mode != "smoke", log=exp.log, seed=exp.seed,
                                       block_size=TRAIN_LEN, eval_batches=exp.pick(20, 3, 2))
        curves[enc] = loss_per_position(trained[enc]["model"], data, eval_len, n_windows, exp.seed)
        exp.log(f"{enc}: loss at <= {TRAIN_LEN}: {sum(curves[enc][:TRAIN_LEN]) / TRAIN_LEN:.3f}, "
                f"beyond: {sum(curves[enc][TRAIN_LEN:]) / (eval_len - TRAIN_LEN):.3f}")
    rope_model = trained["rope"]["model"]
    for kind in ("ntk", "yarn"):
        scaled_cfg = rope_model.cfg.replace(rope_scaling=RopeScaling(kind=kind, factor=float(factor),
                                                                     original_max_seq_len=TRAIN_LEN))
        scaled = MiniMindLM(scaled_cfg)
        scaled.load_state_dict(rope_model.state_dict())  # same weights; only the rotation tables change
        curves[f"rope + {kind}"] = loss_per_position(scaled, data, eval_len, n_windows, exp.seed)
    exp.metric("loss_per_position", curves)

    def mean(c, a, b):
        return sum(c[a:b]) / (b - a)

    rows = [[name, mean(c, 0, TRAIN_LEN), mean(c, TRAIN_LEN, 2 * TRAIN_LEN), mean(c, eval_len // 2, eval_len)]
            for name, c in curves.items()]
    exp.table("extrapolation", ["positions", f"loss at 1-{TRAIN_LEN}", f"{TRAIN_LEN + 1}-{2 * TRAIN_LEN}",
                                f"{eval_len // 2 + 1}-{eval_len}"], rows,
              caption=f"Trained on {TRAIN_LEN}-character windows; mean loss (nats / char) over {n_windows} "
                      f"validation windows of {eval_len}.")
    inside = {n: mean(c, 0, TRAIN_LEN) for n, c in curves.items()}
    far = {n: mean(c, eval_len // 2, eval_len) for n, c in curves.items()}
    exp.finding("Plain RoPE degrades beyond the trained length (far loss > inside loss + 0.2)",
                far["rope"] > inside["rope"] + 0.2, inside=inside["rope"], far=far["rope"])
    exp.finding("YaRN scaling lowers RoPE's loss far beyond the trained length", far["rope + yarn"] < far["rope"],
                rope=far["rope"], yarn=far["rope + yarn"])
    exp.finding("NTK scaling lowers RoPE's loss far beyond the trained length", far["rope + ntk"] < far["rope"],
                rope=far["rope"], ntk=far["rope + ntk"])
    exp.finding("ALiBi extrapolates: its far loss stays within 0.1 of its loss inside the trained length",
                far["alibi"] < inside["alibi"] + 0.1, inside=inside["alibi"], far=far["alibi"])
    exp.finding("Learned positions break beyond the trained length (far loss > inside + 0.5)",
                far["learned"] > inside["learned"] + 0.5, inside=inside["learned"], far=far["learned"])

    fig, axes = figure(width=8)
    ax = axes[0][0]
    window = 8
    for name, c in curves.items():
        smooth = [sum(c[max(0, i - window):i + 1]) / len(c[max(0, i - window):i + 1]) for i in range(len(c))]
        ax.plot(range(1, eval_len + 1), smooth, label=name)
    ax.axvline(TRAIN_LEN, color="gray", linestyle=":", label="trained length")
    ax.set(xlabel="position in the window", ylabel="loss (nats / char, 8-position moving average)",
           title=f"trained at {TRAIN_LEN}, evaluated at {eval_len}", ylim=(1.0, math.log(65) + 0.5))
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
