"""fp32 or bf16? The same training in both precisions: loss, and speed at two model widths.

bf16 keeps fp32's exponent range with 8 bits of mantissa instead of 23: half the memory per value and,
on hardware with bf16 matrix units (GPU tensor cores; Intel AMX on recent Xeons), much faster
matrix multiplications. Under autocast, matmuls run in bf16 while weights, optimizer state and the
loss stay fp32. We train the same model in both, at 128 and 384 wide, and compare the val loss and
tokens per second on this CPU (its bf16 capability is recorded in the results).
"""

import torch

from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_config, train_lm
from mmlab.lab.plots import figure


def main(exp: Experiment) -> None:
    steps = exp.pick(full=600, quick=40, smoke=2)
    widths = exp.pick(full=[128, 384], quick=[128, 384], smoke=[64])
    exp.set_config(steps=steps, widths=widths, lr=2e-3, batch="12 x 64", layers=4,
                   cpu_capability=torch.backends.cpu.get_cpu_capability())
    runs = {}
    for width in widths:
        for dtype in ("fp32", "bf16"):
            cfg = shakespeare_config(hidden_size=width, n_heads=width // 32)
            r = train_lm(cfg, steps, 2e-3, seed=exp.seed, dtype=dtype, eval_batches=exp.pick(40, 5, 2))
            r.pop("model")
            runs[f"{width} {dtype}"] = {"width": width, "dtype": dtype, "final_val_loss": r["final_val_loss"],
                                        "tokens_per_s": r["tokens_per_s"], "val_curve": r["val_curve"]}
            exp.log(f"{width} wide, {dtype}: val {r['final_val_loss']:.4f}, {r['tokens_per_s']:.0f} tokens/s")
    exp.metric("runs", runs)
    exp.table("runs", ["width", "precision", "final val loss", "tokens / s"],
              [[r["width"], r["dtype"], r["final_val_loss"], r["tokens_per_s"]] for r in runs.values()],
              caption=f"{steps} steps, one seed; bf16 = autocast (matmuls in bf16, weights and optimizer in fp32). "
                      f"CPU capability: {torch.backends.cpu.get_cpu_capability()}.")
    for width in widths:
        a, b = runs[f"{width} fp32"], runs[f"{width} bf16"]
        exp.finding(f"At {width} wide, bf16 ends within 0.02 of fp32's val loss",
                    abs(a["final_val_loss"] - b["final_val_loss"]) < 0.02, fp32=a["final_val_loss"],
                    bf16=b["final_val_loss"])
        exp.finding(f"At {width} wide, bf16 trains faster than fp32 on this CPU",
                    b["tokens_per_s"] > a["tokens_per_s"], fp32=a["tokens_per_s"], bf16=b["tokens_per_s"],
                    speedup=b["tokens_per_s"] / a["tokens_per_s"])

    fig, axes = figure(len(widths))
    for ax, width in zip(axes[0], widths, strict=True):
        for i, dtype in enumerate(("fp32", "bf16")):
            xs, ys = zip(*runs[f"{width} {dtype}"]["val_curve"], strict=True)
            ax.plot(xs, ys, "o-" if i == 0 else "s--", ms=3, label=dtype)
        ax.set(xlabel="step", ylabel="val loss (nats / char)", title=f"{width} wide")
        ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
