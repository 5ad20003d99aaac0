"""Does gradient accumulation match a big batch? And at a fixed number of tokens, which batch size is
best?

Part 1: a batch of 32 rows in one pass against 4 micro-batches of 8 rows with accumulation, through
the library's ``Trainer`` (same seed, so the same 32 windows per step): the loss curves should agree
to floating-point rounding, because the trainer divides the summed loss by the step's total token
count, not by each micro-batch's.
Part 2: the same number of training tokens split into few large steps or many small ones, at one
learning rate (3e-3, warmup 10% of the steps, cosine): loss per token seen, and tokens per second.
"""

from _common import BLOCK, run

from mmlab.lab import Experiment
from mmlab.lab.plots import figure

LR = 3e-3


def main(exp: Experiment) -> None:
    eq_steps = exp.pick(full=100, quick=20, smoke=2)
    sizes = exp.pick(full=[4, 8, 16, 32, 64], quick=[4, 16, 64], smoke=[2, 4])
    total_rows = exp.pick(full=4800, quick=800, smoke=8)  # rows of 128 tokens over the whole run
    eb = exp.pick(20, 6, 2)
    exp.set_config(equivalence_steps=eq_steps, batch_rows=sizes, total_rows=total_rows,
                   total_tokens=total_rows * BLOCK, lr=LR, block_tokens=BLOCK)

    big = run(eq_steps, LR, seed=exp.seed, eval_batches=eb, batch_size=32, warmup=eq_steps // 10)
    accum = run(eq_steps, LR, seed=exp.seed, eval_batches=eb, batch_size=8, grad_accum=4, warmup=eq_steps // 10)
    diffs = [abs(a - b) for (_, a), (_, b) in zip(big["train_curve"], accum["train_curve"], strict=True)]
    max_diff = max(diffs)
    exp.metric("accumulation", {"batch_32_val": big["final_val_loss"], "accum_4x8_val": accum["final_val_loss"],
                                "max_train_loss_diff": max_diff, "tokens_per_s_batch_32": big["tokens_per_s"],
                                "tokens_per_s_accum_4x8": accum["tokens_per_s"]})
    exp.log(f"accumulation: max train-loss difference {max_diff:.2e}")

    sweep = {}
    for rows in sizes:
        steps = total_rows // rows
        sweep[rows] = run(steps, LR, seed=exp.seed, eval_batches=eb, batch_size=rows, warmup=steps // 10,
                          eval_interval=max(1, steps // 8))
        sweep[rows]["steps"] = steps
        exp.log(f"batch {rows} x {steps} steps: val {sweep[rows]['final_val_loss']:.4f}, "
                f"{sweep[rows]['tokens_per_s']:.0f} tokens/s")
    exp.metric("sweep", {rows: {k: r[k] for k in ("steps", "final_val_loss", "tokens_per_s", "elapsed_s")}
                         for rows, r in sweep.items()})
    exp.table("accumulation", ["run", "tokens / step", "final val loss", "tokens / s"],
              [["1 x 32 rows", 32 * BLOCK, big["final_val_loss"], big["tokens_per_s"]],
               ["4 x 8 rows, accumulated", 32 * BLOCK, accum["final_val_loss"], accum["tokens_per_s"]]],
              caption=f"{eq_steps} steps; the largest difference between the two training-loss curves at any "
                      f"logged step: {max_diff:.2g} nats.")
    exp.table("sweep", ["rows / step", "tokens / step", "steps", "final val loss", "tokens / s", "wall time (s)"],
              [[rows, rows * BLOCK, r["steps"], r["final_val_loss"], r["tokens_per_s"], r["elapsed_s"]]
               for rows, r in sweep.items()],
              caption=f"{total_rows * BLOCK:,} training tokens for every run, lr {LR:g}, one seed.")
    val = {rows: r["final_val_loss"] for rows, r in sweep.items()}
    best = min(val, key=val.get)
    exp.metric("best_batch_rows", best)
    exp.finding("Accumulating 4 micro-batches of 8 gives the same training losses as one batch of 32 "
                "(largest difference < 1e-3 nats)", max_diff < 1e-3, max_diff=max_diff)
    exp.finding("...and the same final val loss (within 1e-3)", abs(big["final_val_loss"] - accum["final_val_loss"])
                < 1e-3, batch_32=big["final_val_loss"], accum_4x8=accum["final_val_loss"])
    exp.finding("At a fixed token budget the largest batch ends worst (too few optimizer steps)",
                val[sizes[-1]] == max(val.values()), **{f"rows_{k}": v for k, v in val.items()})
    exp.finding("...but the smallest batch is not the best either (too noisy, or too slow to use the rate)",
                best != sizes[0], best=best, smallest=sizes[0])
    exp.finding("Larger batches process more tokens per second on this CPU (largest vs smallest)",
                sweep[sizes[-1]]["tokens_per_s"] > sweep[sizes[0]]["tokens_per_s"],
                smallest=sweep[sizes[0]]["tokens_per_s"], largest=sweep[sizes[-1]]["tokens_per_s"])

    fig, axes = figure(2)
    ax = axes[0][0]
    for r, name in ((big, "1 x 32 rows"), (accum, "4 x 8 rows, accumulated")):
        s, loss = zip(*r["train_curve"], strict=True)
        ax.plot(s, loss, "-" if name.startswith("1") else "--", label=name)
    ax.set(xlabel="optimizer step", ylabel="train loss (nats/char)", title="accumulation = a big batch")
    ax.legend()
    ax = axes[0][1]
    for rows, r in sweep.items():
        s, v = zip(*r["val_curve"], strict=True)
        ax.plot([x * rows * BLOCK / 1e6 for x in s], v, "o-", ms=3, label=f"{rows} rows/step")
    ax.set(xlabel="training tokens seen (millions)", ylabel="val loss (nats/char)",
           title="same tokens, different batch sizes")
    lo = min(val.values())
    ax.set_ylim(lo - 0.05, lo + 1.0)
    ax.legend(fontsize=8)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
