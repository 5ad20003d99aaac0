"""What does the KL penalty buy? GRPO with no KL term, the usual small weight, and a large one: reward,
held-out accuracy, and how far the policy drifts from where it started.

Same start, groups of 8, steps and rate as exp1_group_size. The drift is measured after training as
KL(policy || start) per token on completions the policy samples for held-out prompts, and as the loss of
the reference answers (prompts as context) on held-out prompts.
"""

import tempfile
from pathlib import Path

from _common import COMPLETIONS, LR, MAX_NEW, run, smooth

from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.lab.posttrain import sft_settings

GROUP = 8


def main(exp: Experiment) -> None:
    steps = exp.pick(full=300, quick=30, smoke=2)
    kls = exp.pick([0.0, 0.04, 0.4], [0.0, 0.4], [0.0, 0.04])
    exp.set_config(start=sft_settings(exp), steps=steps, kl_coefs=kls, group_size=GROUP,
                   completions_per_step=COMPLETIONS, clip_eps=0.2, lr=LR, max_new_tokens=MAX_NEW)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kl in kls:
            runs[kl] = run(exp, Path(tmp) / f"kl{kl}", steps, GROUP, kl)
            exp.log(f"kl {kl}: exact match {runs[kl]['after']['exact_match']:.3f}, KL to start "
                    f"{runs[kl]['kl_to_start']:.4f}")
    before = runs[kls[0]]["before"]
    exp.metric("runs", {str(k): {"after": {a: b for a, b in r["after"].items() if a != "samples"},
                                 "kl_to_start": r["kl_to_start"], "rollouts": r["rollouts"], "train_s": r["train_s"]}
                        for k, r in runs.items()})
    exp.metric("before", {k: v for k, v in before.items() if k != "samples"})
    exp.table("compare", ["KL weight", "exact match after", "answer loss after (nats/token)",
                          "KL to start (nats/token)", "reward (last 10 steps)"],
              [[k, r["after"]["exact_match"], r["after"]["answer_loss"], r["kl_to_start"],
                sum(x["reward"] for x in r["rollouts"][-10:]) / len(r["rollouts"][-10:])] for k, r in runs.items()],
              caption=f"{steps} steps of {COMPLETIONS} completions (groups of {GROUP}), one seed; before GRPO: exact "
                      f"match {before['exact_match']:.3f}, answer loss {before['answer_loss']:.3f}.")
    lo, hi = runs[kls[0]], runs[kls[-1]]
    exp.finding(f"A larger KL weight keeps the policy closer to the start (KL at {kls[-1]} below KL at {kls[0]})",
                hi["kl_to_start"] < lo["kl_to_start"], low_weight=lo["kl_to_start"], high_weight=hi["kl_to_start"])
    exp.finding(f"Without the KL term held-out exact match is higher than with weight {kls[-1]} (the penalty costs "
                "reward)", lo["after"]["exact_match"] > hi["after"]["exact_match"],
                no_kl=lo["after"]["exact_match"], high_kl=hi["after"]["exact_match"])

    fig, axes = figure()
    ax = axes[0][0]
    for k, r in runs.items():
        ax.plot(range(1, len(r["rollouts"]) + 1), smooth([x["reward"] for x in r["rollouts"]]), label=f"KL weight {k}")
    ax.set(xlabel="step", ylabel="mean reward of the step's completions (10-step mean)", title="GRPO and the KL term")
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
