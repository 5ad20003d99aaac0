"""fp32, bf16 or fp16? Training in mixed precision (autocast: fp32 weights, low-precision matmuls) against
full fp32 — and what breaks when the weights themselves are stored in bfloat16.

Three runs of the same model, data and schedule (AdamW, peak lr 3e-3, cosine): fp32; bf16 autocast;
and "pure bf16": weights and optimizer state in bfloat16, no fp32 master copy. Then two direct looks
at the number formats: (1) one AdamW step at the end-of-schedule rate, added to fp32 weights and to
bf16 weights — the share of the updates rounded away; (2) the trained model's gradients cast to fp16
with and without loss scaling — the share that underflows to zero (why fp16 needs a loss scale and
bf16 does not). fp16 autocast has no fast kernels on most CPUs: it is timed on a few steps only.
"""

import torch
from _common import config, run

from mmlab.device import cpu_label
from mmlab.lab import Experiment
from mmlab.lab.lm import batches
from mmlab.lab.plots import figure
from mmlab.model.lm import MiniMindLM
from mmlab.train.config import TrainConfig
from mmlab.train.optim import build_optimizer

LR = 3e-3


def lost_updates(lr: float, seed: int) -> dict[str, float]:
    """Share of a one-step AdamW update (at ``lr``) that vanishes when the weights are bf16: for each
    parameter, is bf16(w + update) == bf16(w)? By kind: 2-D matrices and the 1-D norm gains (which sit
    near 1.0, where bf16's spacing is 2**-7)."""
    torch.manual_seed(seed)
    model = MiniMindLM(config())
    opt = build_optimizer(model, TrainConfig(lr=lr))
    x, y = batches(128, 16, 1).sample("train", 16, torch.Generator().manual_seed(seed))
    model(x, targets=y).loss.backward()
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    out: dict[str, list[float]] = {"matrices": [], "norm gains": []}
    for p0, p in zip(before, model.parameters(), strict=True):
        update = p.detach() - p0
        stored = p0.bfloat16()
        lost = ((stored.float() + update).bfloat16() == stored) & (update != 0)
        out["matrices" if p.dim() >= 2 else "norm gains"] += [lost.sum().item(), (update != 0).sum().item()]
    return {k: sum(v[0::2]) / max(1, sum(v[1::2])) for k, v in out.items()}


def fp16_underflow(model: MiniMindLM, seed: int) -> dict[str, float]:
    """Share of the model's nonzero fp32 gradients that become 0 when stored in fp16, in fp16 after
    multiplying the loss (so every gradient) by 2^16, and in bf16."""
    x, y = batches(128, 16, 1).sample("train", 16, torch.Generator().manual_seed(seed + 1))
    model.zero_grad()
    model(x, targets=y).loss.backward()
    g = torch.cat([p.grad.flatten() for p in model.parameters()])
    g = g[g != 0]
    return {"fp16": (g.half() == 0).float().mean().item(),
            "fp16, loss x 2^16": ((g * 2.0**16).half() == 0).float().mean().item(),
            "bf16": (g.bfloat16() == 0).float().mean().item()}


def main(exp: Experiment) -> None:
    steps = exp.pick(full=500, quick=80, smoke=3)
    eb = exp.pick(20, 6, 2)
    exp.set_config(steps=steps, peak_lr=LR, warmup=steps // 10, schedule="cosine to lr/10",
                   threads=torch.get_num_threads())
    plans = {"fp32": {"dtype": "fp32"}, "bf16 autocast": {"dtype": "bf16"},
             "pure bf16 (no fp32 master weights)": {"dtype": "fp32", "param_dtype": torch.bfloat16}}
    runs = {}
    for name, kw in plans.items():
        runs[name] = run(steps, LR, seed=exp.seed, eval_batches=eb, warmup=steps // 10,
                         eval_interval=max(1, steps // 10), keep_model=name == "fp32", **kw)
        exp.log(f"{name}: val {runs[name]['final_val_loss']:.4f}, {runs[name]['tokens_per_s']:.0f} tokens/s")
    val = {name: r["final_val_loss"] for name, r in runs.items()}
    speed = {name: r["tokens_per_s"] for name, r in runs.items()}
    fp16_steps = exp.pick(5, 3, 0)  # seconds per step on a CPU: a few steps give its speed (median of steps 2+)
    fp16 = {"tokens_per_s": float("nan")}
    if fp16_steps:
        fp16 = run(fp16_steps, LR, seed=exp.seed, eval_batches=1, warmup=0, dtype="fp16")  # logs every step
        exp.log(f"fp16 autocast: {fp16['tokens_per_s']:.0f} tokens/s over {fp16_steps} steps")
    lost = lost_updates(LR / 10, exp.seed)
    underflow = fp16_underflow(runs["fp32"].pop("model"), exp.seed)
    exp.metric("val_loss", val)
    exp.metric("tokens_per_s", speed)
    exp.metric("lost_update_share_bf16_weights", lost)
    exp.metric("fp16_tokens_per_s", fp16["tokens_per_s"])
    exp.metric("gradient_underflow_share", underflow)
    exp.table("runs", ["precision", "final val loss", "difference from fp32", "tokens / s", "speed vs fp32"],
              [[name, v, v - val["fp32"], speed[name], speed[name] / speed["fp32"]] for name, v in val.items()],
              caption=f"{steps} steps, one seed, {cpu_label()}; tokens/s is the "
                      "median over the run's logging windows.")
    exp.table("lost", ["parameters", "share of the update lost in bf16 weights"], [[k, v] for k, v in lost.items()],
              caption=f"one AdamW step at lr {LR / 10:g} (the end of the schedule); an update is lost when "
                      "rounding w + update to bf16 gives w back.")
    exp.table("underflow", ["gradients cast to", "share of nonzero gradients that become 0"],
              [[k, v] for k, v in underflow.items()],
              caption="the trained fp32 model's gradients on one batch; 2^16 is a typical initial loss scale.")
    pure = "pure bf16 (no fp32 master weights)"
    exp.finding("bf16 autocast ends within 0.02 nats of fp32", abs(val["bf16 autocast"] - val["fp32"]) <= 0.02,
                bf16=val["bf16 autocast"], fp32=val["fp32"])
    exp.finding("Pure bf16 weights end worse than fp32 by more than 0.02 nats", val[pure] - val["fp32"] > 0.02,
                pure_bf16=val[pure], fp32=val["fp32"])
    exp.finding("In bf16 weights, most end-of-schedule updates to the norm gains are rounded away (> 50%)",
                lost["norm gains"] > 0.5, share=lost["norm gains"])
    exp.finding("bf16 autocast trains faster than fp32 on this CPU", speed["bf16 autocast"] > speed["fp32"],
                bf16=speed["bf16 autocast"], fp32=speed["fp32"])
    exp.finding("fp16 autocast is slower than fp32 on this CPU (no fast fp16 kernels)",
                fp16["tokens_per_s"] < speed["fp32"], fp16=fp16["tokens_per_s"], fp32=speed["fp32"])
    exp.finding("Without a loss scale, fp16 flushes some gradients to zero; scaling by 2^16 saves most of them",
                underflow["fp16"] > 0 and underflow["fp16, loss x 2^16"] < underflow["fp16"] / 2, **underflow)
    exp.finding("bf16 loses (almost) none to underflow: fewer than 0.1% of gradients", underflow["bf16"] < 1e-3,
                bf16=underflow["bf16"])

    fig, axes = figure(2)
    ax = axes[0][0]
    for name, r in runs.items():
        s, v = zip(*r["val_curve"], strict=True)
        ax.plot(s, v, "o-", ms=3, label=name)
    ax.set(xlabel="optimizer step", ylabel="val loss (nats/char)", title="held-out loss by precision")
    lo = min(val.values())
    ax.set_ylim(lo - 0.05, lo + 1.0)
    ax.legend(fontsize=8)
    ax = axes[0][1]
    names = list(runs)
    ax.barh(range(len(names)), [speed[n] / 1000 for n in names], color=[f"C{i}" for i in range(len(names))])
    ax.set_yticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=8)
    ax.set(xlabel="training speed (thousand tokens / s)", title="speed on this CPU")
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
