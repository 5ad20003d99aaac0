"""Does a student learn more from a teacher's probabilities than from the data's next tokens? The same
small student trained on the same tokens with hard labels only, the teacher's soft targets only (at
temperatures 1, 2 and 4), and both mixed half and half.

The teacher is the lessons' shared pretrained model (4 x 128, BPE 1,024, TinyStories). The student is
2 x 64, trained from scratch for the same steps, rate and data order in every run. All students are
compared on the same thing: the plain next-token loss (hard labels) on the same held-out tokens, which
is what the hard-label run optimises directly.
"""

import tempfile
from pathlib import Path

from _common import LR, run, student

from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.lab.posttrain import base_settings

PLANS = {  # name: (temperature, alpha = weight of the soft term)
    "hard labels": (1.0, 0.0),
    "soft, T=1": (1.0, 1.0),
    "soft, T=2": (2.0, 1.0),
    "soft, T=4": (4.0, 1.0),
    "both, T=2": (2.0, 0.5),
}


def main(exp: Experiment) -> None:
    steps = exp.pick(full=600, quick=60, smoke=2)
    exp.set_config(teacher=base_settings(exp), student=student(exp).__dict__, steps=steps, lr=LR, rows=16,
                   block=128, plans=PLANS)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (t, alpha)) in enumerate(PLANS.items()):
            runs[name] = run(exp, Path(tmp) / str(i), steps, t, alpha)
            exp.log(f"{name}: student val loss {runs[name]['student_val_loss']:.4f}")
    teacher_loss = runs["hard labels"]["teacher_val_loss"]
    exp.metric("runs", runs)
    hard_run = runs["hard labels"]
    exp.table("compare", ["student trained on", "temperature", "soft weight", "student val loss",
                          "gap to the teacher", "train time (s)"],
              [[name, t, a, runs[name]["student_val_loss"], runs[name]["student_val_loss"] - teacher_loss,
                runs[name]["train_s"]] for name, (t, a) in PLANS.items()],
              caption=f"{steps} steps of 16 rows x 128 tokens; val loss in nats per token on the same "
                      f"{hard_run['val_tokens']:,} held-out tokens; teacher ({hard_run['teacher_params']:,} "
                      f"parameters): {teacher_loss:.3f}; student: {hard_run['student_params']:,} parameters; "
                      "one seed.")
    hard = runs["hard labels"]["student_val_loss"]
    soft = {n: r["student_val_loss"] for n, r in runs.items() if n != "hard labels"}
    best = min(soft, key=soft.get)
    exp.finding("Some use of the teacher's soft targets beats hard labels alone (lower student val loss)",
                soft[best] < hard, best=best, best_loss=soft[best], hard=hard)
    exp.finding("Soft targets at T=2 beat soft targets at T=1", soft["soft, T=2"] < soft["soft, T=1"],
                t2=soft["soft, T=2"], t1=soft["soft, T=1"])
    exp.finding("Mixing soft and hard (T=2) beats soft targets alone at T=2", soft["both, T=2"] < soft["soft, T=2"],
                both=soft["both, T=2"], soft_only=soft["soft, T=2"])
    exp.finding("No student reaches the teacher's val loss", min(r["student_val_loss"] for r in runs.values())
                > teacher_loss, best_student=min(r["student_val_loss"] for r in runs.values()), teacher=teacher_loss)

    fig, axes = figure()
    ax = axes[0][0]
    for name, r in runs.items():
        xs, ys = zip(*r["val_curve"], strict=True)
        ax.plot(xs, ys, "o-", ms=3, label=name)
    ax.axhline(teacher_loss, color="black", ls="--", label="teacher")
    ax.set(xlabel="step", ylabel="student val loss, hard labels (nats / token)",
           title="distillation: what to learn from")
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
