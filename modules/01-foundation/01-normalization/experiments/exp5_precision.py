"""fp32, bf16 or fp16: does the number format change what the model learns, and its speed on a CPU?

The default model (Pre-LN RMSNorm) trained on TinyShakespeare with the same seed and budget in fp32,
with bf16 autocast, and with fp16 autocast (plus loss scaling) where this PyTorch supports it on the
device. Master weights and the optimizer stay in fp32 in every case (that is what autocast does);
RMSNorm and the loss compute in fp32.
"""

import torch

from mmlab.device import cpu_label
from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_config, train_lm
from mmlab.lab.plots import figure


def fp16_autocast_runs(device: str) -> bool:
    try:
        with torch.autocast(device, dtype=torch.float16):
            a = torch.randn(4, 4)
            (a @ a).sum()
        return True
    except (RuntimeError, AssertionError):
        return False


def main(exp: Experiment) -> None:
    steps = exp.pick(full=600, quick=40, smoke=2)
    lr = 2e-3
    fp16_ok = fp16_autocast_runs(exp.device.type)
    formats = ["fp32", "bf16"] + (["fp16"] if fp16_ok else [])
    exp.set_config(steps=steps, lr=lr, model="shakespeare-char", fp16_autocast_supported=fp16_ok,
                   device=str(exp.device))
    results = {}
    for fmt in formats:
        r = train_lm(shakespeare_config(), steps, lr, seed=exp.seed, dtype=fmt, eval_batches=exp.pick(40, 5, 2))
        results[fmt] = {k: v for k, v in r.items() if k != "model"}
        exp.log(f"{fmt}: val {r['final_val_loss']:.4f}, {r['tokens_per_s']:.0f} tok/s")
    exp.metric("runs", results)
    exp.metric("fp16", f"fp16 autocast on {exp.device.type} {'runs' if fp16_ok else 'is not supported: not trained'}")
    rows = [[fmt, r["final_val_loss"], r["tokens_per_s"]] for fmt, r in results.items()]
    exp.table("precision", ["format", "final val loss", "tokens / s"], rows,
              caption=f"{steps} steps at lr {lr:g}, same seed and data order; measured on {cpu_label()}.")
    diff = results["bf16"]["final_val_loss"] - results["fp32"]["final_val_loss"]
    exp.finding("bf16 autocast ends within 0.03 of fp32's val loss", abs(diff) < 0.03, bf16_minus_fp32=diff)
    exp.finding("bf16 autocast trains faster than fp32 at this model size on this CPU",
                results["bf16"]["tokens_per_s"] > results["fp32"]["tokens_per_s"],
                bf16=results["bf16"]["tokens_per_s"], fp32=results["fp32"]["tokens_per_s"])
    if "fp16" in results:
        d16 = results["fp16"]["final_val_loss"] - results["fp32"]["final_val_loss"]
        exp.finding("fp16 autocast with loss scaling ends within 0.03 of fp32's val loss", abs(d16) < 0.03,
                    fp16_minus_fp32=d16)

    fig, axes = figure()
    for fmt, r in results.items():
        axes[0][0].plot([s for s, _ in r["val_curve"]], [v for _, v in r["val_curve"]], "o-", markersize=3,
                        label=f"{fmt} ({r['tokens_per_s']:,.0f} tok/s)")
    axes[0][0].set(xlabel="step", ylabel="val loss (nats / char)", title="same model, same data, two number formats")
    axes[0][0].legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
