"""What does SFT teach first? The same base fine-tuned for more and more steps, with exact match
measured per task on held-out prompts.

Full SFT (loss on the assistant's tokens) of the lessons' shared pretrained base on the synthetic
verifiable tasks, for several step counts; each count is its own run from the base with the same data
order. The held-out prompts come from another seed. Copy and reverse prompts are almost never repeated
(random letter strings); multiplication (operands up to 12) and facts (a fixed toy world) come from small
sets, so the share of held-out prompts that also appear in the training data is measured and reported:
on those tasks "held-out" accuracy is partly memorisation, and the accuracy on prompts never trained on is
reported apart.
"""

import tempfile
from itertools import pairwise
from pathlib import Path

from mmlab.data.synthetic import TASKS
from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.lab.posttrain import base_settings, heldout_tasks, lesson_base, stage_config, task_accuracy
from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model
from mmlab.train.sft import split_heldout, task_conversations

N_SYNTHETIC = 20_000


def main(exp: Experiment) -> None:
    from mmlab.train.sft import sft

    plan = exp.pick(full=[100, 300, 1000], quick=[20, 60], smoke=[2])
    n_synthetic = exp.pick(N_SYNTHETIC, 4000, 200)
    lr = 1e-3
    base = lesson_base(exp)
    items = heldout_tasks(exp)
    train_convs, _ = split_heldout(task_conversations(n_synthetic, exp.seed), 0.1, seed=exp.seed)
    seen = {c[0]["content"] for c in train_convs}
    overlap = {t: sum(i.prompt in seen for i in items if i.task == t) / max(1, sum(i.task == t for i in items))
               for t in TASKS}
    exp.set_config(base=base_settings(exp), steps=plan, lr=lr, rows=16, block=128, n_synthetic=n_synthetic,
                   heldout_prompts=len(items))
    unseen = [i for i in items if i.prompt not in seen]
    tok = load_checkpoint_tokenizer(base)

    def measure(model) -> dict[str, float]:
        return task_accuracy(model, tok, items) | {"unseen": task_accuracy(model, tok, unseen)["all"]}

    acc = {0: measure(load_model(base))}
    with tempfile.TemporaryDirectory() as tmp:
        for steps in plan:
            out = Path(tmp) / f"sft-{steps}"
            sft(base, "synthetic-tasks", stage_config(exp, out, steps, lr), evaluate=False, n_synthetic=n_synthetic)
            acc[steps] = measure(load_model(out))
            exp.log(f"{steps} steps: exact match {acc[steps]['all']:.3f} " +
                    " ".join(f"{t} {acc[steps][t]:.2f}" for t in TASKS))
    exp.metric("accuracy", {str(k): v for k, v in acc.items()})
    exp.metric("heldout_seen_in_training", overlap)
    exp.table("per_task", ["SFT steps", *TASKS, "all", "all, unseen prompts only"],
              [[k, *(v[t] for t in TASKS), v["all"], v["unseen"]] for k, v in acc.items()],
              caption=f"greedy exact match on {len(items)} fresh prompts ({len(items) // len(TASKS)} per task; "
                      f"{len(unseen)} of them never appear in the training data); 0 steps is the pretrained base; "
                      "one seed.")
    exp.table("overlap", ["task", *TASKS], [["held-out prompts also in the training data", *overlap.values()]])
    last = acc[plan[-1]]
    exp.finding("The pretrained base answers no task prompt exactly (it has never seen the chat template)",
                acc[0]["all"] == 0.0, base=acc[0]["all"])
    exp.finding("Copying is learned before addition: after the longest run, copy accuracy is higher than add "
                "accuracy", last["copy"] > last["add"], copy=last["copy"], add=last["add"])
    exp.finding("Exact match rises with every step count", all(acc[a]["all"] < acc[b]["all"] for a, b in
                                                              pairwise(plan)),
                **{f"steps_{k}": acc[k]["all"] for k in plan})

    fig, axes = figure()
    ax = axes[0][0]
    xs = [max(k, 1) for k in acc]
    for t in [*TASKS, "all"]:
        ax.plot(xs, [acc[k][t] for k in acc], "o-" if t != "all" else "k-", lw=1 if t != "all" else 2.5, ms=3,
                label=t)
    ax.set_xscale("log")
    ax.set(xlabel="SFT steps (log; the base is drawn at 1)", ylabel="held-out exact match",
           title="what SFT teaches first")
    ax.legend(fontsize=8)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
