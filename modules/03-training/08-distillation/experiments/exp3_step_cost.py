"""Does the temperature change what a distillation step costs? Time training steps side by side.

`exp1_soft_vs_hard`'s train times were taken while other jobs shared the machine, so they cannot answer
this. Here the same student (exp1's 2 x 64) and teacher (the lessons' base model) take full training
steps (forward, `DistillLoss`, backward, AdamW) on the same batch shape, 16 rows x 128 tokens, with four
settings: hard labels only (no teacher call), and soft targets only at T = 1, 2 and 4. The settings are
interleaved: each round times a few steps of every setting, in an order that rotates from round to round,
so a change in the machine's load hits all of them alike. A step's cost is the median over all its timed
steps (after one warm-up round), with the interquartile range as its spread.

What to expect: dividing the logits by T is one elementwise operation, and the softmax, the KL and the
teacher's forward pass do the same work at any T; the teacher's forward is the one real extra cost.
"""

import statistics
import time

import torch
from _common import LR, student

from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.lab.posttrain import base_settings, lesson_base
from mmlab.model.lm import MiniMindLM
from mmlab.train.checkpoint import load_model
from mmlab.train.distill import DistillLoss

SETTINGS = [("hard labels", 1.0, 0.0), ("soft, T = 1", 1.0, 1.0), ("soft, T = 2", 2.0, 1.0),
            ("soft, T = 4", 4.0, 1.0)]  # (name, temperature, alpha: the soft term's weight)


def main(exp: Experiment) -> None:
    rounds = exp.pick(full=25, quick=6, smoke=2)
    per_round = exp.pick(full=4, quick=2, smoke=1)
    rows, block = (16, 128) if exp.mode != "smoke" else (2, 32)
    teacher = load_model(lesson_base(exp)).eval()
    cfg = student(exp)
    exp.set_config(teacher=base_settings(exp), student=cfg.__dict__, rows=rows, block=block, rounds=rounds,
                   steps_per_round=per_round, warmup_rounds=1, lr=LR, threads=torch.get_num_threads(),
                   settings=[{"name": n, "temperature": t, "alpha": a} for n, t, a in SETTINGS])
    g = torch.Generator().manual_seed(exp.seed)
    x = torch.randint(0, cfg.vocab_size, (rows, block + 1), generator=g)  # the content does not change the cost
    batch = (x[:, :-1], x[:, 1:])
    trainers = {}
    for name, t, alpha in SETTINGS:
        torch.manual_seed(exp.seed)
        model = MiniMindLM(cfg).train()
        trainers[name] = (model, torch.optim.AdamW(model.parameters(), lr=LR), DistillLoss(teacher, t, alpha))

    def step(name: str) -> float:
        model, opt, loss_fn = trainers[name]
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, n, _ = loss_fn(model, batch)
        (loss / n).backward()
        opt.step()
        return time.perf_counter() - start

    times = {name: [] for name, _, _ in SETTINGS}
    for r in range(rounds + 1):
        k = r % len(SETTINGS)
        for name, _, _ in SETTINGS[k:] + SETTINGS[:k]:
            got = [step(name) for _ in range(per_round)]
            if r > 0:  # round 0 warms up every setting
                times[name] += got
        exp.log(f"round {r}/{rounds}: " + ", ".join(f"{n} {1e3 * statistics.median(v):.1f} ms"
                                                      for n, v in times.items() if v))

    stats = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        stats[name] = {"median_ms": 1e3 * q[1], "q1_ms": 1e3 * q[0], "q3_ms": 1e3 * q[2], "steps": len(ts)}
    exp.metric("steps", stats)
    hard = stats["hard labels"]["median_ms"]
    exp.table("cost", ["setting", "median ms / step", "interquartile range (ms)", "vs hard labels"],
              [[n, s["median_ms"], f"{s['q1_ms']:.1f}-{s['q3_ms']:.1f}", f"{s['median_ms'] / hard:.2f}x"]
               for n, s in stats.items()],
              caption=f"{rows} rows x {block} tokens per step; {rounds} interleaved rounds of {per_round} steps per "
                      f"setting after one warm-up round; {torch.get_num_threads()} threads; wall time of "
                      "forward + loss + backward + AdamW.")
    t1, t4 = stats["soft, T = 1"]["median_ms"], stats["soft, T = 4"]["median_ms"]
    spread = max(s["median_ms"] for n, s in stats.items() if n != "hard labels") / min(
        s["median_ms"] for n, s in stats.items() if n != "hard labels")
    exp.metric("soft_spread", spread)
    exp.finding("A soft-target step costs the same at T = 1, 2 and 4 (medians within 10% of each other)",
                spread <= 1.10, slowest_over_fastest=spread, t1_ms=t1, t4_ms=t4)
    exp.finding("A soft-target step costs more than a hard-label step (it runs the teacher forward)",
                t1 > hard, soft_t1_ms=t1, hard_ms=hard)

    fig, axes = figure()
    ax = axes[0][0]
    names = list(stats)
    med = [stats[n]["median_ms"] for n in names]
    err = [[m - stats[n]["q1_ms"] for n, m in zip(names, med, strict=True)],
           [stats[n]["q3_ms"] - m for n, m in zip(names, med, strict=True)]]
    ax.bar(range(len(names)), med, yerr=err, capsize=4, color=["#999999"] + ["#4477aa"] * 3)
    ax.set_xticks(range(len(names)), names)
    ax.set(xlabel="training signal", ylabel="median time per step (ms)",
           title="what a distillation step costs (bars: interquartile range)")
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
