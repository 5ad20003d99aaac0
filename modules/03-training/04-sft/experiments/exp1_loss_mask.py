"""Does SFT need the loss mask when it starts from a pretrained model? Full SFT of the same base, with
the loss on the assistant's tokens only and on every token, on two kinds of data.

The base is the lessons' shared pretrained model (4 x 128, BPE 1,024, TinyStories). The data: the
synthetic verifiable tasks (arithmetic, copy, reverse, facts: exact match is measurable) and
instructions-1k (real instructions: answer loss and ROUGE-L against the reference). Every run is
measured the same way on its held-out split: the loss of the reference answers' tokens (prompts as
context) and greedy answers. The data lesson asked the same question from random weights; here the
model already knows the language.
"""

import tempfile
from pathlib import Path

from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.lab.posttrain import base_settings, curve, lesson_base, stage_config
from mmlab.train.sft import sft

DATA = {"synthetic-tasks": "synthetic tasks", "instructions-1k": "instructions-1k"}


def main(exp: Experiment) -> None:
    steps = exp.pick(full=600, quick=60, smoke=2)
    n_gen = exp.pick(200, 40, 4)
    lr = 1e-3
    base = lesson_base(exp)
    exp.set_config(base=base_settings(exp), steps=steps, lr=lr, rows=16, block=128, n_synthetic=20_000,
                   val_fraction=0.1, greedy_answers=n_gen)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for data in DATA:
            for loss_on in ("assistant", "all"):
                out = Path(tmp) / f"{data}-{loss_on}"
                run = sft(base, data, stage_config(exp, out, steps, lr), train_on_prompt=loss_on == "all",
                          n_generate=n_gen, n_synthetic=exp.pick(20_000, 4000, 200))
                runs[(data, loss_on)] = {"before": _plain(run.before), "after": _plain(run.after),
                                         "samples": run.after["samples"], "val_curve": curve(out),
                                         "train_s": run.result.elapsed_s, "encoding": run.encoding}
                a = run.after
                exp.log(f"{data}, loss on {loss_on}: answer loss {a['answer_loss']:.3f}, exact {a['exact_match']:.3f}, "
                        f"ROUGE-L {a['rouge_l']:.3f}")
    exp.metric("runs", {f"{d} | {m}": r for (d, m), r in runs.items()})
    exp.table("compare", ["data", "loss on", "answer loss before", "answer loss after", "exact match after",
                          "ROUGE-L after"],
              [[DATA[d], m, r["before"]["answer_loss"], r["after"]["answer_loss"], r["after"]["exact_match"],
                r["after"]["rouge_l"]] for (d, m), r in runs.items()],
              caption=f"{steps} steps of 16 rows x 128 tokens (packed) from the same base, lr {lr:g}, one seed; "
                      f"answer loss in nats per answer token over the whole held-out split, greedy answers on "
                      f"{n_gen} held-out prompts.")
    exp.metric("samples", [{"title": f"{DATA[d]}, loss on {m}: {s['prompt'][:70]!r}",
                            "text": f"reference: {s['reference'][:160]}\nanswer:    {s['answer'][:160]}"}
                           for (d, m), r in runs.items() for s in r["samples"][:1]])
    for data in DATA:
        mask, full = runs[(data, "assistant")]["after"], runs[(data, "all")]["after"]
        exp.finding(f"{DATA[data]}: with the mask, the held-out answer loss ends lower than without it",
                    mask["answer_loss"] < full["answer_loss"], mask=mask["answer_loss"], no_mask=full["answer_loss"])
    t_mask, t_all = runs[("synthetic-tasks", "assistant")]["after"], runs[("synthetic-tasks", "all")]["after"]
    exp.finding("synthetic tasks: the mask gives a higher exact match", t_mask["exact_match"] > t_all["exact_match"],
                mask=t_mask["exact_match"], no_mask=t_all["exact_match"])
    i_mask, i_all = runs[("instructions-1k", "assistant")]["after"], runs[("instructions-1k", "all")]["after"]
    exp.finding("instructions-1k: the mask gives a higher ROUGE-L", i_mask["rouge_l"] > i_all["rouge_l"],
                mask=i_mask["rouge_l"], no_mask=i_all["rouge_l"])
    for data in DATA:
        r = runs[(data, "assistant")]
        exp.finding(f"{DATA[data]}: SFT lowers the held-out answer loss of the base",
                    r["after"]["answer_loss"] < r["before"]["answer_loss"], before=r["before"]["answer_loss"],
                    after=r["after"]["answer_loss"])

    fig, axes = figure(2)
    for ax, data in zip(axes[0], DATA, strict=True):
        for loss_on in ("assistant", "all"):
            xs, ys = zip(*runs[(data, loss_on)]["val_curve"], strict=True)
            ax.plot(xs, ys, "o-", ms=3, label=f"loss on {loss_on} tokens")
        ax.set(xlabel="SFT step", ylabel="held-out loss on answer tokens (nats / token)", title=DATA[data])
        ax.legend()
    exp.savefig(fig)


def _plain(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "samples"}


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
