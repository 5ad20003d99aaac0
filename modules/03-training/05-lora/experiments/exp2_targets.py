"""Where should the adapters go? LoRA of rank 8 on the attention's query and value projections only
(the original paper's choice), on all four attention projections, on the feed-forward layers only,
and on every linear layer.

Same base, data, steps and rate for every run (see exp1_rank_vs_full); alpha 16. Every run also trains
the (tied) embedding in full, which exp1_rank_vs_full shows this base needs (the chat template's tokens
are new to it), so the runs differ only in where the adapters sit. The trainable parameter count
differs between the choices, so it is in the table beside the quality.
"""

import tempfile
from pathlib import Path

from _common import LORA_LR, run

from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.lab.posttrain import base_settings
from mmlab.model.lora import LoRAConfig

CHOICES = {"q, v": ["q_proj", "v_proj"], "q, k, v, o": ["q_proj", "k_proj", "v_proj", "o_proj"],
           "feed-forward": ["gate_proj", "up_proj", "down_proj"], "all linear": ["all-linear"]}


def main(exp: Experiment) -> None:
    steps = exp.pick(full=600, quick=60, smoke=2)
    n_gen = exp.pick(200, 40, 4)
    exp.set_config(base=base_settings(exp), steps=steps, rank=8, alpha=16, lr=LORA_LR, targets=CHOICES,
                   train_modules=["tok_emb"], rows=16, block=128, greedy_answers=n_gen)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, targets) in enumerate(CHOICES.items()):
            lora = LoRAConfig(rank=8, alpha=16, target_modules=targets, train_modules=["tok_emb"])
            runs[name] = run(exp, Path(tmp) / str(i), steps, lora, n_gen)
            exp.log(f"{name}: trainable {runs[name]['trainable_params']:,}, exact {runs[name]['exact_match']:.3f}")
    exp.metric("runs", runs)
    exp.table("compare", ["targets", "trainable params", "answer loss", "exact match"],
              [[name, r["trainable_params"], r["answer_loss"], r["exact_match"]] for name, r in runs.items()],
              caption=f"rank 8, alpha 16, the embedding trained in full in every run (its parameters are counted), "
                      f"{steps} steps from the same base, one seed; greedy exact match on {n_gen} held-out prompts.")
    qv, all_lin, ffn = runs["q, v"], runs["all linear"], runs["feed-forward"]
    exp.finding("Adapting every linear layer beats adapting only q and v (lower answer loss)",
                all_lin["answer_loss"] < qv["answer_loss"], all_linear=all_lin["answer_loss"], q_v=qv["answer_loss"])
    exp.finding("The feed-forward layers matter more than q and v: FFN-only LoRA beats q, v-only (lower answer loss)",
                ffn["answer_loss"] < qv["answer_loss"], feed_forward=ffn["answer_loss"], q_v=qv["answer_loss"])

    fig, axes = figure()
    ax = axes[0][0]
    for name, r in runs.items():
        xs, ys = zip(*r["val_curve"], strict=True)
        ax.plot(xs, ys, "o-", ms=3, label=f"{name} ({r['trainable_params']:,} params)")
    ax.set(xlabel="step", ylabel="held-out answer loss (nats / token)", title="LoRA rank 8: where the adapters go")
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
