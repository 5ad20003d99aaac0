"""Deep and narrow or shallow and wide, at the same number of parameters?

Four models with about the same non-embedding parameters (each block costs ~12 C² for width C):
2 layers x 176, 4 x 128, 8 x 88 and 16 x 64, all with 4 heads, trained on TinyShakespeare with the
same budget. We report the exact parameter counts, the val loss and the training speed: depth costs
sequential work that width does not.
"""

from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_config, train_lm
from mmlab.lab.plots import figure

SHAPES = [(2, 176), (4, 128), (8, 88), (16, 64)]


def main(exp: Experiment) -> None:
    steps = exp.pick(full=600, quick=30, smoke=2)
    lr = 2e-3
    shapes = exp.pick(full=SHAPES, quick=SHAPES, smoke=SHAPES[:2])
    exp.set_config(shapes=shapes, steps=steps, lr=lr, heads=4, ffn="SwiGLU 8/3 x width (multiple of 8)",
                   batch="12 x 64")
    runs = {}
    for layers, width in shapes:
        cfg = shakespeare_config(n_layers=layers, hidden_size=width, ffn_multiple_of=8)
        r = train_lm(cfg, steps, lr, seed=exp.seed, eval_batches=exp.pick(50, 5, 2))
        params = r.pop("model").num_params(exclude_embeddings=True)
        runs[f"{layers}x{width}"] = {**r, "layers": layers, "width": width, "params": params}
        exp.log(f"{layers} x {width}: {params:,} params, val {r['final_val_loss']:.4f}, {r['tokens_per_s']:.0f} tok/s")
    exp.metric("runs", runs)
    keys = list(runs)
    exp.table("shapes", ["layers x width", "non-embedding params", "final val loss", "train tokens / s"],
              [[k.replace("x", " x "), runs[k]["params"], runs[k]["final_val_loss"], runs[k]["tokens_per_s"]]
               for k in keys], caption=f"{steps} steps at lr {lr:g}, one seed.")
    p = [runs[k]["params"] for k in keys]
    exp.finding("The shapes have the same non-embedding parameters within 10%", max(p) / min(p) < 1.1, params=p)
    v = {k: runs[k]["final_val_loss"] for k in keys}
    best = min(v, key=v.get)
    exp.finding("Neither extreme wins: the best shape is one of the middle ones", best not in (keys[0], keys[-1]),
                best=best, losses=v)
    speed = {k: runs[k]["tokens_per_s"] for k in keys}
    exp.finding("The deepest shape trains the slowest (tokens/s)", min(speed, key=speed.get) == keys[-1], speed=speed)

    fig, axes = figure(2, 1, width=4.8, height=3.6)
    layers = [runs[k]["layers"] for k in keys]
    axes[0][0].plot(layers, [v[k] for k in keys], "o-")
    axes[0][1].plot(layers, [speed[k] for k in keys], "s-")
    for ax, ylabel in ((axes[0][0], "final val loss (nats / char)"), (axes[0][1], "train tokens / s")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(layers, [k.replace("x", " x ") for k in keys])
        ax.set(xlabel="layers x width (same parameters)", ylabel=ylabel)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
