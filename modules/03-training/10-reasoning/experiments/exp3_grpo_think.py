"""Can RL with a verifiable reward improve a model that reasons? GRPO from the traces model, rewarding a
closed think block followed by only the answer (format) and the exact answer (correctness).

The traces model of ``exp1`` samples 8 completions per problem (4 problems of 1-4 steps per step, temperature
1, up to 100 new tokens); ``think_reward`` gives 1 for the exact answer after the think block plus 0.1 for the
format; group-normalised advantages, the clipped ratio, a KL penalty of 0.04 to the start
(``mmlab train grpo --reward think``). Measured: the reward and the format rate along the way, and held-out
exact match (thinking on, greedy) by number of steps, with the tokens spent thinking, before and after.
"""

import tempfile
from pathlib import Path

from _common import HELDOUT_STEPS, MAX_NEW, by_steps, heldout, reasoning_sft, sft_settings

from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.lab.posttrain import reasoning_accuracy, stage_config
from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model
from mmlab.train.grpo import grpo

GROUP, PROMPTS, KL, LR, FORMAT_WEIGHT = 8, 4, 0.04, 1e-4, 0.1


def smooth(values: list[float], k: int = 10) -> list[float]:
    return [sum(values[max(0, i - k + 1):i + 1]) / len(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]


def main(exp: Experiment) -> None:
    steps = exp.pick(full=120, quick=6, smoke=2)
    problems = heldout(exp)
    start = reasoning_sft(exp, "traces")
    exp.set_config(start=sft_settings(exp, "traces"), steps=steps, group_size=GROUP, prompts_per_step=PROMPTS,
                   kl_coef=KL, lr=LR, reward="think", format_weight=FORMAT_WEIGHT, max_new_tokens=MAX_NEW,
                   temperature=1.0, heldout_problems=len(problems))
    tok = load_checkpoint_tokenizer(start)
    before = reasoning_accuracy(load_model(start).eval(), tok, problems, think=True, max_new_tokens=MAX_NEW)[None]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "grpo"
        cfg = stage_config(exp, out, steps, LR, batch_size=PROMPTS if exp.mode != "smoke" else 1,
                           eval_interval=steps)
        record = grpo(start, cfg, group_size=GROUP if exp.mode != "smoke" else 2, kl_coef=KL,
                      max_new_tokens=MAX_NEW, reward="think", n_prompts=2000, n_heldout=exp.pick(16, 8, 2))
        after = reasoning_accuracy(load_model(out).eval(), tok, problems, think=True, max_new_tokens=MAX_NEW)[None]
    h = record["rollouts"]
    # reward = correct + FORMAT_WEIGHT * format per completion, so the batch's format rate follows from the two means
    fmt = [(x["reward"] - x["accuracy"]) / FORMAT_WEIGHT for x in h]
    k = max(1, len(h) // 4)
    exp.metric("before", before)
    exp.metric("after", after)
    exp.metric("rollouts", h)
    exp.metric("format_rate", fmt)
    exp.metric("train_s", record["train_s"])
    rows = [[when, *by_steps(r["accuracy"]), r["accuracy"]["all"], r["think_tokens"]["all"], r["closed"]]
            for when, r in (("before (traces SFT)", before), ("after GRPO", after))]
    exp.table("compare", ["model", *(f"{k} steps" for k in HELDOUT_STEPS), "all", "thinking tokens",
                          "think block closed"], rows,
              caption=f"{steps} GRPO steps of {PROMPTS} problems x {GROUP} completions, lr {LR}, one seed; "
                      f"held-out: {len(problems)} problems, thinking on, greedy. Training took "
                      f"{record['train_s']:.0f} s.")
    first, last = h[:k], h[-k:]
    mean = lambda xs, key: sum(x[key] for x in xs) / len(xs)  # noqa: E731
    exp.table("rollouts", ["rollouts", "reward", "sampled accuracy", "format rate", "groups with signal",
                           "completion tokens"],
              [[f"first {k} steps", mean(first, "reward"), mean(first, "accuracy"), sum(fmt[:k]) / k,
                mean(first, "signal"), mean(first, "length")],
               [f"last {k} steps", mean(last, "reward"), mean(last, "accuracy"), sum(fmt[-k:]) / k,
                mean(last, "signal"), mean(last, "length")]])
    exp.finding("GRPO raises held-out exact match over the traces-SFT start",
                after["accuracy"]["all"] > before["accuracy"]["all"], before=before["accuracy"]["all"],
                after=after["accuracy"]["all"])
    exp.finding(f"The training reward rises (last {k} steps above the first {k})",
                mean(last, "reward") > mean(first, "reward"), first=mean(first, "reward"), last=mean(last, "reward"))
    exp.finding("The format holds throughout: every step's sampled completions keep the format at least 90% of "
                "the time", min(fmt) >= 0.9, lowest=min(fmt), mean=sum(fmt) / len(fmt))
    four = HELDOUT_STEPS.index(4)
    exp.finding("GRPO raises exact match on 4-step problems, the longest it trains on",
                by_steps(after["accuracy"])[four] > by_steps(before["accuracy"])[four],
                before=by_steps(before["accuracy"])[four], after=by_steps(after["accuracy"])[four])
    exp.finding("Thinking gets longer under RL (more held-out thinking tokens after than before)",
                after["think_tokens"]["all"] > before["think_tokens"]["all"], before=before["think_tokens"]["all"],
                after=after["think_tokens"]["all"])

    fig, axes = figure(2)
    ax = axes[0][0]
    xs = range(1, len(h) + 1)
    ax.plot(xs, smooth([x["reward"] for x in h]), label="reward")
    ax.plot(xs, smooth([x["accuracy"] for x in h]), label="sampled accuracy")
    ax.plot(xs, smooth(fmt), label="format rate")
    ax.set(xlabel="GRPO step", ylabel="mean over the step's completions (10-step mean)", title="rollouts")
    ax.legend()
    ax = axes[0][1]
    width = 0.38
    pos = range(len(HELDOUT_STEPS))
    ax.bar([p - width / 2 for p in pos], by_steps(before["accuracy"]), width, label="before (traces SFT)")
    ax.bar([p + width / 2 for p in pos], by_steps(after["accuracy"]), width, label="after GRPO")
    ax.set(xticks=list(pos), xticklabels=[str(s) for s in HELDOUT_STEPS], xlabel="steps in the problem",
           ylabel="held-out exact match (thinking on)", title="before and after", ylim=(0, 1.05))
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
