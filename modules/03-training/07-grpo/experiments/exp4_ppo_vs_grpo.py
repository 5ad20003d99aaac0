"""GRPO or PPO with a critic? The same start, the same tasks and rewards, the same number of sampled
completions (32 per rollout batch, each batch used for two optimizer steps) and the same learning rate:
GRPO's baseline is the mean reward of a group of 8 answers to one prompt; PPO learns a baseline instead,
a critic (a copy of the start with a scalar head, initialised to predict 0) that predicts the return at
every token, with GAE advantages and the KL to the start inside the per-token reward (InstructGPT's
recipe). PPO runs twice: with GRPO's groups of 8, and with one answer per prompt (32 prompts), which a
critic allows and GRPO does not.

Measured: held-out greedy exact match, the reward along the way, the policy's drift (KL to the start),
train time, and the memory a method needs whatever the batch: weights + gradients + AdamW moments of what
it trains, plus the frozen reference's weights.
"""

import tempfile
from pathlib import Path

from _common import COMPLETIONS, LR, MAX_NEW, run, smooth

from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.lab.posttrain import sft_settings
from mmlab.train.checkpoint import load_model
from mmlab.train.ppo import model_state_bytes

PPO_EPOCHS = 2  # optimizer steps per rollout batch, for every method
KL = 0.04
RUNS = {  # label -> (method, completions per prompt)
    "GRPO, groups of 8": ("grpo", 8),
    "PPO, groups of 8": ("ppo", 8),
    "PPO, 1 per prompt": ("ppo", 1),
}


def main(exp: Experiment) -> None:
    steps = exp.pick(full=300, quick=30, smoke=2)
    exp.set_config(start=sft_settings(exp), steps=steps, runs={k: {"method": m, "group_size": g}
                                                               for k, (m, g) in RUNS.items()},
                   completions_per_rollout=COMPLETIONS, ppo_epochs=PPO_EPOCHS, kl_coef=KL, clip_eps=0.2, lr=LR,
                   max_new_tokens=MAX_NEW, ppo={"gamma": 1.0, "lam": 0.95, "vf_coef": 0.1, "cliprange_value": 0.2})
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, (method, g)) in enumerate(RUNS.items()):
            out = Path(tmp) / f"run{i}"
            runs[label] = run(exp, out, steps, g, KL, method=method, ppo_epochs=PPO_EPOCHS)
            if method == "grpo":
                policy = load_model(out)
                runs[label]["memory"] = {"model_state_mib": model_state_bytes([policy], [policy]) / 2**20}
            exp.log(f"{label}: exact match {runs[label]['before']['exact_match']:.3f} -> "
                    f"{runs[label]['after']['exact_match']:.3f}, {runs[label]['train_s']:.0f} s")
    before = next(iter(runs.values()))["before"]["exact_match"]

    def last(r, key, k=10):
        h = r["rollouts"][-k:]
        return sum(x[key] for x in h) / len(h)

    def first(r, key, k=10):
        h = r["rollouts"][:k]
        return sum(x[key] for x in h) / len(h)

    exp.metric("before", before)
    exp.metric("runs", {label: {"after": {a: b for a, b in r["after"].items() if a != "samples"},
                                "rollouts": r["rollouts"], "train_s": r["train_s"], "kl_to_start": r["kl_to_start"],
                                "model_state_mib": r["memory"]["model_state_mib"]} for label, r in runs.items()})
    exp.table("compare", ["method", "exact match after", "reward (first 10 rollouts)", "reward (last 10 rollouts)",
                          "KL to start (nats/token)",
                          "train time (s)", "weights + grads + AdamW + reference (MiB)"],
              [[label, r["after"]["exact_match"], first(r, "reward"), last(r, "reward"), r["kl_to_start"], r["train_s"],
                r["memory"]["model_state_mib"]] for label, r in runs.items()],
              caption=f"{steps} optimizer steps = {steps // PPO_EPOCHS} rollout batches of {COMPLETIONS} completions "
                      f"each, one seed; exact match before: {before:.3f} on "
                      f"{next(iter(runs.values()))['heldout_prompts']} held-out prompts. Train time includes "
                      "sampling; the runs ran one after another in one process.")
    grpo_r, ppo8, ppo1 = (runs[k] for k in RUNS)
    exp.finding("PPO needs more than 1.5x GRPO's weights + gradients + optimizer state (the critic is a second model)",
                ppo8["memory"]["model_state_mib"] > 1.5 * grpo_r["memory"]["model_state_mib"],
                grpo=grpo_r["memory"]["model_state_mib"], ppo=ppo8["memory"]["model_state_mib"])
    exp.finding("At equal rollouts PPO takes longer than GRPO (its critic's forward and backward passes)",
                ppo8["train_s"] > grpo_r["train_s"], grpo=grpo_r["train_s"], ppo=ppo8["train_s"])
    exp.finding("Both methods raise held-out exact match by more than 0.02 over the start (beyond a few prompts' luck)",
                grpo_r["after"]["exact_match"] > before + 0.02 and ppo8["after"]["exact_match"] > before + 0.02,
                before=before, grpo=grpo_r["after"]["exact_match"], ppo=ppo8["after"]["exact_match"])
    exp.finding("Both methods raise the training reward (last 10 rollouts above the first 10)",
                all(last(r, "reward") > first(r, "reward") for r in (grpo_r, ppo8)),
                **{f"{label} first/last": [first(r, "reward"), last(r, "reward")] for label, r in runs.items()})
    exp.finding("PPO ends within 0.02 of GRPO's held-out exact match (same rollouts, a learned baseline)",
                abs(ppo8["after"]["exact_match"] - grpo_r["after"]["exact_match"]) <= 0.02,
                grpo=grpo_r["after"]["exact_match"], ppo=ppo8["after"]["exact_match"])
    exp.finding("With one answer per prompt (no group to compare with) PPO still raises held-out exact match "
                "by more than 0.02", ppo1["after"]["exact_match"] > before + 0.02, before=before,
                ppo_one=ppo1["after"]["exact_match"])
    critics = {label: r for label, r in runs.items() if "value" in r["rollouts"][0]}
    gaps = {label: (abs(r["rollouts"][0]["value"] - r["rollouts"][0]["reward"]),
                    abs(last(r, "value") - last(r, "reward"))) for label, r in critics.items()}
    exp.finding("The critic learns: its mean prediction ends closer to the mean reward than it started (both PPO runs)",
                all(end < start for start, end in gaps.values()),
                **{f"{label} start/end": list(v) for label, v in gaps.items()})

    fig, axes = figure(2)
    ax = axes[0][0]
    for label, r in runs.items():
        h = r["rollouts"]
        ax.plot([PPO_EPOCHS * (i + 1) for i in range(len(h))], smooth([x["reward"] for x in h]), label=label)
    ax.set(xlabel="optimizer step", ylabel="mean reward of a rollout's completions (10-rollout mean)",
           title="reward at equal rollouts")
    ax.legend()
    ax = axes[0][1]
    for label, r in runs.items():
        h = r["rollouts"]
        if "value" in h[0]:
            ax.plot([PPO_EPOCHS * (i + 1) for i in range(len(h))], smooth([x["value"] for x in h]),
                    label=f"{label}: critic's mean value")
    ax.set(xlabel="optimizer step", ylabel="mean predicted return per completion token", title="the critic")
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
