"""ReLU, GELU, SwiGLU or ReLU^2, at matched parameters and FLOPs: which FFN trains the best model here?

Two-matrix FFNs (ReLU, GELU, ReLU^2) get a hidden size of 4 x 128 = 512; the gated SwiGLU (three
matrices) gets 341, so every variant has the same FFN parameters (within 0.1%) and the same matmul
FLOPs per token. nanochat reports ReLU^2 beating SwiGLU at matched FLOPs on its (much larger) runs;
our data decides for our scale. Two seeds per activation in the full run, so the spread between
seeds shows how much of a gap is noise. "linear" (no activation) is the floor: an FFN that collapses
into one matrix.
"""

import statistics

from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_config, train_lm
from mmlab.lab.plots import figure

SIZES = {"relu": 512, "gelu": 512, "relu2": 512, "swiglu": 341, "linear": 512}


def main(exp: Experiment) -> None:
    steps = exp.pick(full=800, quick=50, smoke=2)
    seeds = exp.pick(full=[0, 1], quick=[0], smoke=[0])
    lr = 2e-3
    exp.set_config(
        sizes=SIZES,
        steps=steps,
        seeds=[exp.seed + s for s in seeds],
        lr=lr,
        model="shakespeare-char (4 layers x 128)",
        batch="12 x 64",
    )
    runs = {}
    for act, size in SIZES.items():
        runs[act] = {"seeds": {}}
        for s in seeds if act != "linear" else seeds[:1]:
            r = train_lm(
                shakespeare_config(ffn_act=act, ffn_size=size),
                steps,
                lr,
                seed=exp.seed + s,
                eval_batches=exp.pick(50, 5, 2),
            )
            model = r.pop("model")
            runs[act]["ffn_params"] = sum(p.numel() for n, p in model.named_parameters() if ".ffn." in n)
            runs[act]["seeds"][exp.seed + s] = r
            exp.log(f"{act} seed {exp.seed + s}: val {r['final_val_loss']:.4f}")
        losses = [r["final_val_loss"] for r in runs[act]["seeds"].values()]
        runs[act]["mean_val_loss"] = statistics.mean(losses)
        runs[act]["spread"] = max(losses) - min(losses) if len(losses) > 1 else None  # one seed: no spread
        runs[act]["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in runs[act]["seeds"].values())
    exp.metric("runs", runs)
    ranked = sorted(SIZES, key=lambda a: runs[a]["mean_val_loss"])
    exp.table(
        "final",
        [
            "activation",
            "FFN hidden",
            "FFN params",
            "mean final val loss",
            "seed spread (max - min)",
            "rank",
            "train tokens / s",
        ],
        [
            [
                a,
                SIZES[a],
                runs[a]["ffn_params"],
                runs[a]["mean_val_loss"],
                runs[a]["spread"],
                ranked.index(a) + 1,
                runs[a]["tokens_per_s"],
            ]
            for a in SIZES
        ],
        caption=f"{steps} steps at lr {lr:g}; mean over {len(seeds)} seed(s) (linear: 1).",
    )
    m = {a: runs[a]["mean_val_loss"] for a in SIZES}
    p = [runs[a]["ffn_params"] for a in SIZES]
    exp.finding("All variants have the same FFN parameters within 0.1%", max(p) / min(p) < 1.001, params=p)
    exp.finding(
        "Every activation beats no activation (linear FFN)",
        all(m[a] < m["linear"] for a in SIZES if a != "linear"),
        linear=m["linear"],
        worst_nonlinear=max(m[a] for a in SIZES if a != "linear"),
    )
    noise = max((runs[a]["spread"] or 0.0) for a in SIZES if a != "linear")
    exp.finding("SwiGLU ends lower than ReLU^2 here", m["swiglu"] < m["relu2"], swiglu=m["swiglu"], relu2=m["relu2"])
    exp.finding(
        "...by more than the spread between seeds (a gap larger than the noise we measured)",
        abs(m["swiglu"] - m["relu2"]) > noise,
        gap=abs(m["swiglu"] - m["relu2"]),
        seed_spread=noise,
    )
    per_seed = [runs["swiglu"]["seeds"][k]["final_val_loss"] < runs["relu2"]["seeds"][k]["final_val_loss"]
                for k in runs["swiglu"]["seeds"]]
    exp.finding(
        "SwiGLU is ahead of ReLU^2 in every seed (same seed = same init and data order)",
        all(per_seed),
        seeds=len(per_seed),
    )
    exp.finding("The best activation is SwiGLU", ranked[0] == "swiglu", best=ranked[0])

    fig, axes = figure()
    ax = axes[0][0]
    for a in SIZES:
        for s, r in runs[a]["seeds"].items():
            c = r["val_curve"]
            ax.plot(
                [x for x, _ in c],
                [y for _, y in c],
                "o-" if s == exp.seed else "o:",
                markersize=3,
                label=a if s == exp.seed else None,
                color=f"C{list(SIZES).index(a)}",
            )
    ax.set(xlabel="step", ylabel="val loss (nats / char)", title="FFN activations at matched parameters and FLOPs")
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
