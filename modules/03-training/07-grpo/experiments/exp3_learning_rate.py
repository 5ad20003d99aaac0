"""How large a step can RL take? GRPO at three learning rates, everything else as in exp1_group_size
(groups of 8, 32 completions per step, KL weight 0.04): the reward along the way, held-out exact match,
and the drift from the start.

The speedrun's GRPO stage uses the largest of these rates on a stronger SFT model; this is the same
stage on the lessons' weaker shared SFT model.
"""

import tempfile
from pathlib import Path

from _common import COMPLETIONS, MAX_NEW, run, smooth

from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.lab.posttrain import sft_settings

GROUP = 8


def main(exp: Experiment) -> None:
    steps = exp.pick(full=300, quick=30, smoke=2)
    lrs = exp.pick([3e-5, 1e-4, 3e-4], [3e-5, 3e-4], [3e-5])
    exp.set_config(start=sft_settings(exp), steps=steps, lrs=lrs, group_size=GROUP, completions_per_step=COMPLETIONS,
                   kl_coef=0.04, clip_eps=0.2, max_new_tokens=MAX_NEW)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for lr in lrs:
            runs[lr] = run(exp, Path(tmp) / f"lr{lr}", steps, GROUP, 0.04, lr=lr)
            exp.log(f"lr {lr:g}: exact match {runs[lr]['before']['exact_match']:.3f} -> "
                    f"{runs[lr]['after']['exact_match']:.3f}")
    before = runs[lrs[0]]["before"]["exact_match"]

    def reward(r, first: bool) -> float:
        h = r["rollouts"][:30] if first else r["rollouts"][-30:]
        return sum(x["reward"] for x in h) / len(h)

    exp.metric("runs", {str(lr): {"after": {k: v for k, v in r["after"].items() if k != "samples"},
                                  "kl_to_start": r["kl_to_start"], "rollouts": r["rollouts"]}
                        for lr, r in runs.items()})
    exp.table("compare", ["learning rate", "exact match after", "reward, first 30 steps", "reward, last 30 steps",
                          "KL to start (nats/token)"],
              [[lr, r["after"]["exact_match"], reward(r, True), reward(r, False), r["kl_to_start"]]
               for lr, r in runs.items()],
              caption=f"{steps} steps of {COMPLETIONS} completions (groups of {GROUP}), one seed; exact match before "
                      f"GRPO: {before:.3f} on {runs[lrs[0]]['heldout_prompts']} held-out prompts.")
    lo, hi = runs[lrs[0]], runs[lrs[-1]]
    exp.finding(f"At lr {lrs[0]:g} GRPO raises held-out exact match over the SFT start", lo["after"]["exact_match"] >
                before, before=before, after=lo["after"]["exact_match"])
    exp.finding(f"At lr {lrs[-1]:g} GRPO lowers held-out exact match below the start", hi["after"]["exact_match"] <
                before, before=before, after=hi["after"]["exact_match"])
    exp.finding(f"At lr {lrs[-1]:g} even the training reward falls (last 30 steps below the first 30)",
                reward(hi, False) < reward(hi, True), first=reward(hi, True), last=reward(hi, False))
    exp.finding("A larger rate drifts further from the start", hi["kl_to_start"] > lo["kl_to_start"],
                low_rate=lo["kl_to_start"], high_rate=hi["kl_to_start"])

    fig, axes = figure()
    ax = axes[0][0]
    for lr, r in runs.items():
        ax.plot(range(1, len(r["rollouts"]) + 1), smooth([x["reward"] for x in r["rollouts"]], 20), label=f"lr {lr:g}")
    ax.set(xlabel="step", ylabel="mean reward of the step's completions (20-step mean)", title="GRPO: learning rate")
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
