"""How many completions per prompt? GRPO with groups of 2, 4, 8 and 16 sampled answers per prompt, at
the same number of completions per step (so the same compute): more prompts with small groups, fewer
prompts with large ones.

Every run starts from the lessons' shared SFT model (far from perfect on the tasks), rewards an exact
answer with 1 plus 0.1 for ending the answer properly, normalises rewards within each group, clips the
ratio at 0.2 and keeps a KL penalty of 0.04 to the start. A group whose completions all get the same
reward has zero advantages: it teaches nothing. Measured: held-out greedy exact match before and after,
the reward and the share of groups with any signal along the way.
"""

import tempfile
from itertools import pairwise
from pathlib import Path

from _common import COMPLETIONS, LR, MAX_NEW, run, smooth

from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.lab.posttrain import sft_settings


def main(exp: Experiment) -> None:
    steps = exp.pick(full=300, quick=30, smoke=2)
    groups = exp.pick([2, 4, 8, 16], [4, 16], [2])
    exp.set_config(start=sft_settings(exp), steps=steps, group_sizes=groups, completions_per_step=COMPLETIONS,
                   kl_coef=0.04, clip_eps=0.2, lr=LR, max_new_tokens=MAX_NEW, temperature=1.0)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for g in groups:
            runs[g] = run(exp, Path(tmp) / f"g{g}", steps, g, 0.04)
            exp.log(f"group {g}: exact match {runs[g]['before']['exact_match']:.3f} -> "
                    f"{runs[g]['after']['exact_match']:.3f}, {runs[g]['train_s']:.0f} s")
    before = runs[groups[0]]["before"]["exact_match"]
    exp.metric("runs", {str(g): {k: v for k, v in r.items() if k not in ("before", "after")} |
                        {"before": {k: v for k, v in r["before"].items() if k != "samples"},
                         "after": {k: v for k, v in r["after"].items() if k != "samples"}}
                        for g, r in runs.items()})
    rows = []
    for g, r in runs.items():
        h = r["rollouts"]
        rows.append([g, COMPLETIONS // g, r["after"]["exact_match"], sum(x["signal"] for x in h) / len(h),
                     sum(x["reward"] for x in h[-10:]) / len(h[-10:]), r["kl_to_start"], r["train_s"]])
    exp.table("compare", ["group size", "prompts per step", "exact match after", "groups with signal",
                          "reward (last 10 steps)", "KL to start (nats/token)", "train time (s)"], rows,
              caption=f"{steps} steps of {COMPLETIONS} sampled completions, one seed; exact match before: "
                      f"{before:.3f} on {runs[groups[0]]['heldout_prompts']} held-out prompts.")
    after = {g: r["after"]["exact_match"] for g, r in runs.items()}
    exp.finding("GRPO raises held-out exact match over the SFT start at every group size",
                all(a > before for a in after.values()), before=before, **{f"group_{g}": a for g, a in after.items()})
    signal = {g: sum(x["signal"] for x in r["rollouts"]) / len(r["rollouts"]) for g, r in runs.items()}
    exp.finding("Larger groups have a larger share of groups with a learning signal (not all rewards equal)",
                all(signal[a] < signal[b] for a, b in pairwise(groups)),
                **{f"group_{g}": s for g, s in signal.items()})
    best = max(after, key=after.get)
    exp.finding("A middle group size (4 or 8) gives the best exact match", best in (4, 8), best_group=best,
                **{f"group_{g}": a for g, a in after.items()})

    fig, axes = figure(2)
    ax = axes[0][0]
    for g, r in runs.items():
        ax.plot(range(1, len(r["rollouts"]) + 1), smooth([x["reward"] for x in r["rollouts"]]), label=f"group {g}")
    ax.set(xlabel="step", ylabel="mean reward of the step's completions (10-step mean)", title="training reward")
    ax.legend()
    ax = axes[0][1]
    ax.bar([str(g) for g in groups], [after[g] for g in groups], color="tab:blue")
    ax.axhline(before, color="grey", ls="--", label="before GRPO")
    ax.set(xlabel="group size (completions per prompt)", ylabel="held-out exact match", title="after GRPO")
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
