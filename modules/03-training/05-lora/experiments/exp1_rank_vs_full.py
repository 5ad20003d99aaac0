"""How small can the trainable part be? LoRA at ranks 1 to 64 on every linear layer of the blocks,
against full fine-tuning, on the same SFT task: quality, trainable parameters, optimizer memory, wall
time and the size of what must be saved.

Every run starts from the lessons' shared pretrained base and trains on the synthetic verifiable tasks
for the same steps and data order. LoRA: alpha = 2 x rank (so alpha / rank, the scale of the update, is
the same at every rank), no dropout, lr 3e-3; full fine-tuning: lr 1e-3. Held-out: answer loss over
the whole held-out split and greedy exact match.

One more run tests why LoRA falls short here: the chat template's tokens never occurred in pretraining,
so pretraining only ever pushed their (tied) logits down (`exp3_new_token_embeddings` measures where that
left them), and an adapter on the linear layers cannot change their embeddings. It trains
the (tied) embedding in full beside a rank-16 adapter (``train_modules``, peft's ``modules_to_save``).
"""

import tempfile
from pathlib import Path

from _common import FULL_LR, LORA_LR, run

from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.lab.posttrain import base_settings
from mmlab.model.lora import LoRAConfig


def main(exp: Experiment) -> None:
    steps = exp.pick(full=600, quick=60, smoke=2)
    ranks = exp.pick([1, 4, 16, 64], [1, 16], [2])
    emb_rank = ranks[-2] if len(ranks) > 2 else ranks[-1]
    n_gen = exp.pick(200, 40, 4)
    exp.set_config(base=base_settings(exp), steps=steps, ranks=ranks, alpha="2 x rank", targets="all-linear",
                   lora_lr=LORA_LR, full_lr=FULL_LR, rows=16, block=128, greedy_answers=n_gen)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs["full"] = run(exp, Path(tmp) / "full", steps, None, n_gen)
        for r in ranks:
            lora = LoRAConfig(rank=r, alpha=2 * r, target_modules=["all-linear"])
            runs[f"rank {r}"] = run(exp, Path(tmp) / f"r{r}", steps, lora, n_gen)
        # the chat template's tokens never occurred in pretraining, so their embeddings were never fitted to
        # appear as input, and LoRA on the linear layers cannot change them; train the (tied) embedding too
        lora = LoRAConfig(rank=emb_rank, alpha=2 * emb_rank, target_modules=["all-linear"], train_modules=["tok_emb"])
        runs[f"rank {emb_rank} + embeddings"] = run(exp, Path(tmp) / "emb", steps, lora, n_gen)
    for name, r in runs.items():
        exp.log(f"{name}: trainable {r['trainable_params']:,}, exact {r['exact_match']:.3f}, answer loss "
                f"{r['answer_loss']:.3f}, {r['train_s']:.0f} s")
    exp.metric("runs", runs)
    full = runs["full"]
    exp.table("compare", ["fine-tuning", "trainable params", "share of the model", "AdamW state (KiB)",
                          "saved file (KiB)", "train time (s)", "answer loss", "exact match"],
              [[name, r["trainable_params"], r["trainable_params"] / r["total_params"],
                r["optimizer_state_bytes"] / 1024, (r["adapter_file_bytes"] or r["model_file_bytes"]) / 1024,
                r["train_s"], r["answer_loss"], r["exact_match"]] for name, r in runs.items()],
              caption=f"{steps} steps of 16 rows x 128 tokens from the same base, one seed. The saved file is the "
                      "adapter for LoRA and the whole model for full fine-tuning; greedy exact match on "
                      f"{n_gen} held-out prompts.")
    lo = [runs[f"rank {r}"] for r in ranks]
    emb, same_rank = runs[f"rank {emb_rank} + embeddings"], runs[f"rank {emb_rank}"]
    exp.finding(f"Training the embeddings too (the chat tokens are new to the base) lowers rank {emb_rank}'s answer "
                "loss by more than half the gap to full fine-tuning",
                same_rank["answer_loss"] - emb["answer_loss"] > 0.5 * (same_rank["answer_loss"] - full["answer_loss"]),
                lora=same_rank["answer_loss"], lora_embeddings=emb["answer_loss"], full=full["answer_loss"])
    share = {r: runs[f"rank {r}"]["trainable_params"] / full["trainable_params"] for r in ranks}
    exp.finding(f"Rank {ranks[0]} trains under 2% of the parameters", share[ranks[0]] < 0.02, share=share[ranks[0]])
    exp.finding(f"At width 128, rank {ranks[-1]} trains more than a quarter of them: LoRA is small only when the "
                "rank is far below the width", share[ranks[-1]] > 0.25, share=share[ranks[-1]])
    best = max([*lo, emb], key=lambda r: r["exact_match"])
    exp.finding("The best LoRA run reaches at least 90% of full fine-tuning's exact match",
                best["exact_match"] >= 0.9 * full["exact_match"], best_lora=best["exact_match"],
                full=full["exact_match"])
    exp.finding(f"Rank {ranks[-1]} ends with a lower answer loss than rank {ranks[0]}",
                lo[-1]["answer_loss"] < lo[0]["answer_loss"], high=lo[-1]["answer_loss"], low=lo[0]["answer_loss"])
    exp.finding("LoRA is not faster per step here: every LoRA run takes at least 90% of full fine-tuning's time",
                all(r["train_s"] >= 0.9 * full["train_s"] for r in lo), full_s=full["train_s"],
                fastest_lora_s=min(r["train_s"] for r in lo))

    fig, axes = figure(2)
    ax = axes[0][0]
    for name, r in runs.items():
        ax.plot(r["trainable_params"], r["exact_match"], "s" if name == "full" else "o", ms=7)
        ax.annotate(name, (r["trainable_params"], r["exact_match"]), textcoords="offset points", xytext=(4, 4))
    ax.set_xscale("log")
    ax.set(xlabel="trainable parameters (log)", ylabel="held-out exact match", title="quality vs trainable size")
    ax = axes[0][1]
    for name, r in runs.items():
        xs, ys = zip(*r["val_curve"], strict=True)
        ax.plot(xs, ys, "o-", ms=3, label=name)
    ax.set(xlabel="step", ylabel="held-out answer loss (nats / token)", title="learning curves")
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
