"""Does DPO learn a real preference, or memorise the pairs? DPO on preferences-1k (real human-style
preference pairs) at several betas; preference accuracy on held-out pairs against pairs it trained on.

The policy and the frozen reference start as the lessons' shared SFT model. Pairs are templated and cut
at 128 tokens (chosen and rejected the same way); a pair whose prompt leaves no answer token is skipped
and counted, and records whose two answers are identical are skipped and counted too. Held-out pairs are
a fixed 10% split.
"""

import tempfile
from pathlib import Path

from _common import LR, ROWS, log_ratio, run

from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.lab.posttrain import sft_settings


def main(exp: Experiment) -> None:
    steps = exp.pick(full=300, quick=30, smoke=2)
    betas = exp.pick([0.03, 0.1, 0.3, 1.0], [0.1, 1.0], [0.1])
    exp.set_config(start=sft_settings(exp), data="preferences-1k", betas=betas, steps=steps, lr=LR,
                   pairs_per_step=ROWS, block=128)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for beta in betas:
            r = run(exp, Path(tmp) / f"b{beta}", "preferences-1k", beta, steps, 0)
            runs[beta] = r | {"log_ratio_after": log_ratio(r["after"], beta)}
            exp.log(f"beta {beta}: accuracy held-out {r['after']['accuracy']:.3f}, trained pairs "
                    f"{r['after_train_pairs']['accuracy']:.3f}")
    first = runs[betas[0]]
    exp.metric("data", {"pairs": first["pairs"], "skipped_too_long": {"train": first["skipped"]["train_count"],
                                                                     "val": first["skipped"]["val_count"]},
                        "identical_answers_skipped": first["identical_answers_skipped"]["count"]})
    exp.metric("runs", {str(b): {k: v for k, v in r.items() if k != "skipped"} for b, r in runs.items()})
    epochs = steps * ROWS / first["pairs"]["train"]
    exp.table("compare", ["beta", "pref. accuracy (held-out)", "pref. accuracy (trained pairs)",
                          "reward margin (held-out)", "chosen log-prob moved (nats)", "rejected log-prob moved (nats)"],
              [[b, r["after"]["accuracy"], r["after_train_pairs"]["accuracy"], r["after"]["reward_margin"],
                r["log_ratio_after"]["chosen"], r["log_ratio_after"]["rejected"]] for b, r in runs.items()],
              caption=f"{steps} steps of {ROWS} pairs ({epochs:.1f} passes over {first['pairs']['train']} training "
                      f"pairs), lr {LR:g}, one seed; {first['pairs']['val']} held-out pairs; at the start every "
                      "accuracy is 0.5 (policy = reference).")
    held = {b: r["after"]["accuracy"] for b, r in runs.items()}
    seen = {b: r["after_train_pairs"]["accuracy"] for b, r in runs.items()}
    exp.finding("DPO fits the pairs it trains on: accuracy on trained pairs exceeds 0.8 at some beta",
                max(seen.values()) > 0.8, **{f"beta_{b}": v for b, v in seen.items()})
    exp.finding("The preference generalises: held-out accuracy exceeds 0.6 at some beta", max(held.values()) > 0.6,
                **{f"beta_{b}": v for b, v in held.items()})
    exp.finding("Accuracy on trained pairs exceeds held-out accuracy by more than 0.1 at every beta (memorisation)",
                all(seen[b] - held[b] > 0.1 for b in betas), **{f"gap_beta_{b}": seen[b] - held[b] for b in betas})

    fig, axes = figure()
    ax = axes[0][0]
    ax.plot(betas, [held[b] for b in betas], "o-", label="held-out pairs")
    ax.plot(betas, [seen[b] for b in betas], "s-", label="pairs it trained on")
    ax.axhline(0.5, color="grey", ls="--", label="chance (and the start)")
    ax.set_xscale("log")
    ax.set(xlabel="beta (log)", ylabel="preference accuracy", title="DPO on preferences-1k")
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
