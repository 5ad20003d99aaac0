"""What does beta do, when we can check the answers? DPO on synthetic preference pairs (a correct and an
incorrect answer to a verifiable task) at several betas, and — as a control — the same number of steps
of plain SFT on the correct answers.

Every run starts from the lessons' shared SFT model (the base after SFT on the tasks, far from perfect),
which is also DPO's frozen reference. Same steps, rate (1e-4) and 8 pairs (or 8 conversations' worth of
packed rows, for SFT) per step. Measured on held-out pairs: preference accuracy, reward margin, how far the
chosen and rejected answers' log-probabilities moved; and greedy exact match on held-out task prompts,
which is what a user of the model cares about.
"""

import tempfile
from pathlib import Path

from _common import LR, ROWS, log_ratio, run

from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.lab.posttrain import lesson_sft, sft_settings, stage_config
from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model
from mmlab.train.dpo import heldout_pairs, pair_task_accuracy
from mmlab.train.sft import sft


def main(exp: Experiment) -> None:
    steps = exp.pick(full=200, quick=30, smoke=2)
    betas = exp.pick([0.03, 0.1, 0.3, 1.0], [0.1, 1.0], [0.1])
    n_gen = exp.pick(300, 60, 4)
    exp.set_config(start=sft_settings(exp), data="synthetic-pairs", betas=betas, steps=steps, lr=LR,
                   pairs_per_step=ROWS, greedy_answers=n_gen)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for beta in betas:
            r = run(exp, Path(tmp) / f"b{beta}", "synthetic-pairs", beta, steps, n_gen)
            runs[beta] = r | {"log_ratio_after": log_ratio(r["after"], beta)}
            exp.log(f"beta {beta}: held-out accuracy {r['after']['accuracy']:.3f}, exact match "
                    f"{r['before']['exact_match']:.3f} -> {r['after']['exact_match']:.3f}")
        cfg = stage_config(exp, Path(tmp) / "sft", steps, LR)
        control = sft(lesson_sft(exp), "synthetic-tasks", cfg, n_generate=n_gen,
                      n_synthetic=exp.pick(20_000, 4000, 200))
        # measured on DPO's own held-out prompts (the same split `dpo` makes), so every row of the table is
        # scored on the same questions; the SFT stage's own held-out score is kept beside it
        tok = load_checkpoint_tokenizer(lesson_sft(exp))
        _, val_pairs, _, _ = heldout_pairs("synthetic-pairs", 0.1, cfg.seed, exp.pick(300, 100, 8))
        on_pairs = {when: pair_task_accuracy(load_model(ckpt).eval(), tok, val_pairs, cfg.block_size, n_gen)
                    for when, ckpt in (("before", lesson_sft(exp)), ("after", Path(tmp) / "sft"))}
    before = runs[betas[0]]["before"]
    exp.metric("runs", {str(b): {k: v for k, v in r.items() if k not in ("skipped",)} for b, r in runs.items()})
    exp.metric("sft_control", {"before": on_pairs["before"]["exact_match"], "after": on_pairs["after"]["exact_match"],
                               "own_heldout": {"before": control.before["exact_match"],
                                               "after": control.after["exact_match"]}})
    rows = [["start (the SFT model)", before["accuracy"], "—", before["exact_match"], "—", "—"]]
    rows += [[f"DPO, beta {b}", r["after"]["accuracy"], r["after_train_pairs"]["accuracy"], r["after"]["exact_match"],
              r["log_ratio_after"]["chosen"], r["log_ratio_after"]["rejected"]] for b, r in runs.items()]
    rows += [["more SFT on task answers (control)", "—", "—", on_pairs["after"]["exact_match"], "—", "—"]]
    exp.table("compare", ["run", "pref. accuracy (held-out)", "pref. accuracy (trained pairs)", "exact match",
                          "chosen log-prob moved (nats)", "rejected log-prob moved (nats)"], rows,
              caption=f"{steps} steps of {ROWS} pairs from the same SFT model, lr {LR:g}, one seed. Log-prob moves are "
                      "means over held-out pairs of log pi - log pi_ref for the whole answer. Exact match: greedy "
                      "answers to the same held-out prompts in every row; the tasks come from small sets, and the "
                      "SFT data (the start's and the control's) are drawn by the same generator, so they hold "
                      "these prompts with their answers.")
    after = {b: r["after"] for b, r in runs.items()}
    exp.finding("DPO raises held-out preference accuracy above the start at every beta",
                all(a["accuracy"] > before["accuracy"] for a in after.values()), start=before["accuracy"],
                **{f"beta_{b}": a["accuracy"] for b, a in after.items()})
    exp.finding("DPO raises exact match at some beta", any(a["exact_match"] > before["exact_match"]
                                                          for a in after.values()),
                start=before["exact_match"], **{f"beta_{b}": a["exact_match"] for b, a in after.items()})
    best = max(a["exact_match"] for a in after.values())
    exp.finding("DPO beats the same steps of SFT on task answers (best beta's exact match, same held-out prompts)",
                best > on_pairs["after"]["exact_match"], best_dpo=best, sft=on_pairs["after"]["exact_match"],
                start=on_pairs["before"]["exact_match"])
    moved = {b: r["log_ratio_after"]["chosen"] for b, r in runs.items()}
    exp.finding("DPO lowers the chosen answers' log-probability too, at some beta (it widens the gap, not "
                "the likelihood)", any(v < 0 for v in moved.values()), **{f"beta_{b}": v for b, v in moved.items()})
    exp.finding("A smaller beta moves the policy further: the rejected answers' log-probability falls more at the "
                "smallest beta than at the largest",
                runs[betas[0]]["log_ratio_after"]["rejected"] < runs[betas[-1]]["log_ratio_after"]["rejected"],
                smallest=runs[betas[0]]["log_ratio_after"]["rejected"],
                largest=runs[betas[-1]]["log_ratio_after"]["rejected"])

    fig, axes = figure(2)
    ax = axes[0][0]
    ax.plot(betas, [after[b]["accuracy"] for b in betas], "o-", label="preference accuracy (held-out)")
    ax.plot(betas, [after[b]["exact_match"] for b in betas], "s-", label="exact match (held-out)")
    ax.axhline(before["exact_match"], color="grey", ls="--", label="exact match before")
    ax.axhline(control.after["exact_match"], color="green", ls=":", label="exact match, SFT control")
    ax.set_xscale("log")
    ax.set(xlabel="beta (log)", ylabel="share of held-out items", title="DPO on verifiable pairs")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    ax.plot(betas, [runs[b]["log_ratio_after"]["chosen"] for b in betas], "o-", label="chosen")
    ax.plot(betas, [runs[b]["log_ratio_after"]["rejected"] for b in betas], "s-", label="rejected")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set(xlabel="beta (log)", ylabel="log pi - log pi_ref per answer (nats)", title="how far each answer moved")
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
