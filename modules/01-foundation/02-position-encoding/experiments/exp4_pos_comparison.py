"""Which position encoding trains the best character-level model: RoPE, learned, sinusoidal, ALiBi or none?

The same 4-layer, 128-wide model on TinyShakespeare, identical but for ``pos_encoding``, trained with
the same seed, data order and budget. We compare the validation loss.
"""

from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_config, train_lm
from mmlab.lab.plots import figure

ENCODINGS = ["rope", "learned", "sinusoidal", "alibi", "none"]


def main(exp: Experiment) -> None:
    steps = exp.pick(full=800, quick=40, smoke=2)
    lr = 2e-3
    exp.set_config(encodings=ENCODINGS, steps=steps, lr=lr, model="shakespeare-char", batch="12 x 64")
    runs = {}
    for enc in ENCODINGS:
        r = train_lm(shakespeare_config(pos_encoding=enc), steps, lr, seed=exp.seed, eval_batches=exp.pick(50, 5, 2))
        runs[enc] = {k: v for k, v in r.items() if k != "model"}
        exp.log(f"{enc}: val {r['final_val_loss']:.4f}")
    exp.metric("runs", runs)
    ranked = sorted(ENCODINGS, key=lambda e: runs[e]["final_val_loss"])
    exp.table("final", ["position encoding", "final val loss", "rank"],
              [[e, runs[e]["final_val_loss"], ranked.index(e) + 1] for e in ENCODINGS],
              caption=f"{steps} steps at lr {lr:g}, one seed.")
    v = {e: runs[e]["final_val_loss"] for e in ENCODINGS}
    exp.finding("RoPE ends with the lowest val loss", ranked[0] == "rope", best=ranked[0], rope=v["rope"])
    exp.finding("Every position encoding beats no position encoding", all(v[e] < v["none"] for e in ENCODINGS[:-1]),
                none=v["none"], worst_with_positions=max(v[e] for e in ENCODINGS[:-1]))
    exp.finding("No positions still learns far better than a uniform guess (the causal mask leaks order)",
                v["none"] < 3.5, none=v["none"])

    fig, axes = figure()
    for enc in ENCODINGS:
        c = runs[enc]["val_curve"]
        axes[0][0].plot([s for s, _ in c], [x for _, x in c], "o-", markersize=3, label=enc)
    axes[0][0].set(xlabel="step", ylabel="val loss (nats / char)", title="position encodings, same budget")
    axes[0][0].legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
