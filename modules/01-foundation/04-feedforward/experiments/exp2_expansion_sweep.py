"""How wide should the FFN be? Expansion ratio 1x, 2x, 8/3x, 4x, 8x at fixed depth: val loss against
parameters and speed.

The same 4-layer, 128-wide SwiGLU model on TinyShakespeare, identical but for the FFN's hidden size
(ratio x 128); same seed, data order and number of steps. Llama and MiniMind use 8/3x for SwiGLU
(three matrices), which costs the same as 4x for a two-matrix FFN.
"""

import itertools
from fractions import Fraction

from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_config, train_lm
from mmlab.lab.plots import figure

RATIOS = [Fraction(1), Fraction(2), Fraction(8, 3), Fraction(4), Fraction(8)]


def main(exp: Experiment) -> None:
    steps = exp.pick(full=800, quick=50, smoke=2)
    lr = 2e-3
    exp.set_config(
        ratios=[str(r) for r in RATIOS],
        steps=steps,
        lr=lr,
        model="shakespeare-char (4 layers x 128, SwiGLU)",
        batch="12 x 64",
    )
    runs = {}
    for ratio in RATIOS:
        cfg = shakespeare_config(ffn_size=round(ratio * 128))
        r = train_lm(cfg, steps, lr, seed=exp.seed, eval_batches=exp.pick(50, 5, 2))
        model = r.pop("model")
        ffn = sum(p.numel() for n, p in model.named_parameters() if ".ffn." in n)
        runs[str(ratio)] = {
            **r,
            "ffn_size": cfg.resolved_ffn_size,
            "ffn_params": ffn,
            "params_non_embedding": model.num_params(exclude_embeddings=True),
        }
        exp.log(f"{ratio}x ({cfg.resolved_ffn_size}): val {r['final_val_loss']:.4f}, {r['tokens_per_s']:.0f} tok/s")
    exp.metric("runs", runs)
    keys = [str(r) for r in RATIOS]
    exp.table(
        "final",
        ["expansion", "FFN hidden size", "non-embedding params", "final val loss", "train tokens / s"],
        [
            [
                k + "x",
                runs[k]["ffn_size"],
                runs[k]["params_non_embedding"],
                runs[k]["final_val_loss"],
                runs[k]["tokens_per_s"],
            ]
            for k in keys
        ],
        caption=f"{steps} steps at lr {lr:g}, one seed; speed is the median over logged steps on this CPU.",
    )
    v = [runs[k]["final_val_loss"] for k in keys]
    exp.finding(
        "The widest FFN (8x) ends with a lower val loss than the narrowest (1x)",
        v[-1] < v[0],
        one_x=v[0],
        eight_x=v[-1],
    )
    exp.finding(
        "Returns diminish: going from 4x to 8x gains less than going from 1x to 2x",
        (v[3] - v[4]) < (v[0] - v[1]),
        gain_1_to_2=v[0] - v[1],
        gain_4_to_8=v[3] - v[4],
    )
    exp.finding(
        "Val loss falls at every step up in width (monotone)", all(a > b for a, b in itertools.pairwise(v)), losses=v
    )
    exp.finding(
        "8x trains slower than 8/3x (tokens/s)",
        runs["8"]["tokens_per_s"] < runs["8/3"]["tokens_per_s"],
        eight_x=runs["8"]["tokens_per_s"],
        default=runs["8/3"]["tokens_per_s"],
    )

    fig, axes = figure()
    ax = axes[0][0]
    xs = [runs[k]["params_non_embedding"] for k in keys]
    ax.plot(xs, v, "o-")
    for x, y, k in zip(xs, v, keys, strict=True):
        ax.annotate(f"{k}x", (x, y), textcoords="offset points", xytext=(5, 5))
    ax.set_xscale("log")
    ax.set(
        xlabel="non-embedding parameters",
        ylabel="final val loss (nats / char)",
        title=f"FFN expansion ratio, 4 layers x 128, {steps} steps",
    )
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
