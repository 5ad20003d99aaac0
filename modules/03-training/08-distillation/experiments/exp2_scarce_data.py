"""When do soft targets matter most? The same student with hard labels and with the teacher's soft
targets (mixed half and half, T=2), trained on the whole corpus and on a small slice of it that it sees
many times over.

Teacher and student as in exp1_soft_vs_hard. The slice is the first stories of the corpus's training part
(about 64 KiB of text). Every student is measured on the same held-out tokens of the whole corpus, which
neither the slice nor the students' training ever contain. The teacher was pretrained on the whole
corpus: on the slice, its probabilities carry knowledge the slice's tokens do not.
"""

import json
import tempfile
from pathlib import Path

from _common import LR, run, student

from mmlab.data.corpus import load_corpus
from mmlab.data.pretrain import PretrainData, tokenize_corpus
from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.lab.posttrain import base_settings, lesson_base
from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model
from mmlab.train.evaluate import summed_loss

CORPUS = "tinystories-train-2mib"


def main(exp: Experiment) -> None:
    steps = exp.pick(full=600, quick=60, smoke=2)
    slice_chars = exp.pick(64 * 1024, 64 * 1024, 16 * 1024)
    block = 64 if exp.mode == "smoke" else 128
    teacher = lesson_base(exp)
    tok = load_checkpoint_tokenizer(teacher)
    corpus = load_corpus(CORPUS, seed=exp.seed)
    val = PretrainData.from_tokens(tokenize_corpus(corpus, tok), 0.1, block, CORPUS).val[: 64 * block + 1]
    docs, size = [], 0
    for d in corpus.documents:
        if size >= slice_chars:
            break
        docs.append(d)
        size += len(d)
    exp.set_config(teacher=base_settings(exp), student=student(exp).__dict__, steps=steps, lr=LR, rows=16,
                   block=block, temperature=2.0, soft_weight=0.5, slice_chars=size, slice_stories=len(docs))
    sliced = f"{slice_chars // 1024} KiB slice"
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "slice.jsonl"
        small.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        for data_name, data in (("whole corpus", CORPUS), (sliced, str(small))):
            for how, alpha in (("hard labels", 0.0), ("soft + hard", 0.5)):
                out = Path(tmp) / f"{len(runs)}"
                r = run(exp, out, steps, 2.0, alpha, data)
                nats, n = summed_loss(load_model(out).eval(), val, block)
                runs[(data_name, how)] = {"val_loss": nats / n, "train_s": r["train_s"]}
                exp.log(f"{data_name}, {how}: val loss {nats / n:.4f}")
        t_nats, t_n = summed_loss(load_model(teacher).eval(), val, block)
    exp.metric("runs", {f"{d} | {h}": r for (d, h), r in runs.items()})
    exp.metric("teacher_val_loss", t_nats / t_n)
    exp.table("compare", ["student data", "trained on", "val loss (whole corpus)"],
              [[d, h, r["val_loss"]] for (d, h), r in runs.items()],
              caption=f"{steps} steps of 16 rows x {block} tokens; val loss in nats per token on the same "
                      f"{len(val) - 1:,} held-out tokens; the slice is {size:,} characters ({len(docs)} stories); "
                      f"teacher: {t_nats / t_n:.3f}; one seed.")
    gain = {d: runs[(d, "hard labels")]["val_loss"] - runs[(d, "soft + hard")]["val_loss"]
            for d in ("whole corpus", sliced)}
    exp.metric("soft_gain", gain)
    exp.finding("On the slice, soft targets beat hard labels", gain[sliced] > 0, gain=gain[sliced])
    exp.finding("Soft targets help more on the slice than on the whole corpus",
                gain[sliced] > gain["whole corpus"], slice=gain[sliced], whole=gain["whole corpus"])

    fig, axes = figure()
    ax = axes[0][0]
    names = list(gain)
    for k, how in enumerate(("hard labels", "soft + hard")):
        ax.bar([i + 0.38 * k for i in range(len(names))], [runs[(d, how)]["val_loss"] for d in names], 0.38,
               label=how)
    ax.set_xticks([i + 0.19 for i in range(len(names))], names)
    ax.axhline(t_nats / t_n, color="black", ls="--", label="teacher")
    lo = min(r["val_loss"] for r in runs.values())
    ax.set_ylim(min(lo, t_nats / t_n) - 0.3, max(r["val_loss"] for r in runs.values()) + 0.2)
    ax.set(xlabel="what the student trains on", ylabel="val loss on the whole corpus (nats / token)",
           title="soft targets and scarce data")
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
