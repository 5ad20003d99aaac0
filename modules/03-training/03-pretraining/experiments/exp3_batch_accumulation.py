"""Does gradient accumulation really match a big batch? And what does batch size change?

Three runs with 48 rows per optimizer step: one batch of 48, 4 micro-batches of 12, 8 micro-batches of
6 — same data order, same seed. The loop divides each micro-batch's summed loss by the target tokens
of the whole step, so the three compute the same gradient up to floating-point summation order. Then
batch size itself: 12 rows for the same number of steps (a quarter of the tokens) and 12 rows for 4x
the steps (the same tokens, more updates).
"""

from mmlab.lab import Experiment
from mmlab.lab.lm import batches, shakespeare_config, train_lm
from mmlab.lab.plots import figure


def main(exp: Experiment) -> None:
    steps = exp.pick(full=400, quick=40, smoke=2)
    lr = 2e-3
    variants = {
        "48 x 1": {"batch_size": 48, "grad_accum": 1, "steps": steps},
        "12 x 4 (accumulated)": {"batch_size": 12, "grad_accum": 4, "steps": steps},
        "6 x 8 (accumulated)": {"batch_size": 6, "grad_accum": 8, "steps": steps},
        "12 x 1, same steps": {"batch_size": 12, "grad_accum": 1, "steps": steps},
        "12 x 1, same tokens": {"batch_size": 12, "grad_accum": 1, "steps": 4 * steps},
    }
    exp.set_config(variants=variants, lr=lr, block=64, model="shakespeare-char (4 layers x 128)")
    runs = {}
    for name, v in variants.items():
        # the same evaluation windows for every variant (12 rows x n batches), whatever its batch size
        r = train_lm(shakespeare_config(), v["steps"], lr, seed=exp.seed, batch_size=v["batch_size"],
                     grad_accum=v["grad_accum"], eval_interval=max(1, v["steps"] // 8),
                     source=batches(64, 12, exp.pick(40, 5, 2)))
        r.pop("model")
        runs[name] = {**v, "final_val_loss": r["final_val_loss"], "train_curve": r["train_curve"],
                      "val_curve": r["val_curve"], "tokens_per_s": r["tokens_per_s"], "elapsed_s": r["elapsed_s"],
                      "tokens": v["steps"] * v["batch_size"] * v["grad_accum"] * 64}
        exp.log(f"{name}: val {r['final_val_loss']:.4f}, {r['tokens_per_s']:.0f} tokens/s")
    exp.metric("runs", runs)
    big, acc4, acc8 = (runs[k] for k in list(variants)[:3])
    diff = max(abs(a[1] - b[1]) for other in (acc4, acc8)
               for a, b in zip(big["train_curve"], other["train_curve"], strict=True))
    exp.metric("max_train_loss_difference", diff)
    exp.table("runs", ["rows x micro-batches", "steps", "tokens", "final val loss", "tokens / s", "seconds"],
              [[k, r["steps"], r["tokens"], r["final_val_loss"], r["tokens_per_s"], r["elapsed_s"]]
               for k, r in runs.items()],
              caption=f"lr {lr:g}, cosine, one seed; speeds are medians on this CPU.")
    exp.finding("Accumulating 4 or 8 micro-batches follows the same loss curve as one batch of 48 (every logged "
                "train loss within 0.01)", diff < 0.01, max_difference=diff)
    exp.finding("...and ends at the same val loss (within 0.005)",
                max(abs(acc4["final_val_loss"] - big["final_val_loss"]),
                    abs(acc8["final_val_loss"] - big["final_val_loss"])) < 0.005,
                batch_48=big["final_val_loss"], accum_4=acc4["final_val_loss"], accum_8=acc8["final_val_loss"])
    exp.finding("Accumulation costs speed on a CPU: 6 x 8 processes fewer tokens/s than 48 x 1",
                acc8["tokens_per_s"] < big["tokens_per_s"], batch_48=big["tokens_per_s"], accum_8=acc8["tokens_per_s"])
    small, long = runs["12 x 1, same steps"], runs["12 x 1, same tokens"]
    exp.finding("At the same number of steps, 12 rows end worse than 48 (a quarter of the data)",
                small["final_val_loss"] > big["final_val_loss"], rows_12=small["final_val_loss"],
                rows_48=big["final_val_loss"])
    exp.finding("At the same number of tokens, 12 rows x 4x the steps end better than 48 rows",
                long["final_val_loss"] < big["final_val_loss"], rows_12=long["final_val_loss"],
                rows_48=big["final_val_loss"])

    fig, axes = figure()
    ax = axes[0][0]
    for i, (k, r) in enumerate(runs.items()):
        tokens_per_step = r["batch_size"] * r["grad_accum"] * 64
        xs = [p[0] * tokens_per_step / 1e6 for p in r["val_curve"]]
        ax.plot(xs, [p[1] for p in r["val_curve"]], "o-" if i < 3 else "s--", ms=3, color=f"C{i}", label=k,
                alpha=0.8 if i else 1)
    ax.set(xlabel="training tokens (millions)", ylabel="val loss (nats / char)", title="batch size and accumulation")
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
