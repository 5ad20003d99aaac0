"""Do our tiny models answer multiple-choice benchmarks better than a coin toss, and how much does the scoring
rule decide?

Three models of the same architecture and tokenizer (see ``_common.py``): an untrained one (the control), the
pretrained base and the SFT model, on ARC-Easy (test), CommonsenseQA (validation) and HellaSwag (100 items).
Each choice is scored as a continuation of the question by ``mmlab.eval.loglik.LogLikelihood`` (no
generation, no letter to parse), and the model's pick is the choice with the highest score under three
rules: the *summed* log-probability, the mean per *token* and the mean per UTF-8 *byte*. Accuracy is reported
next to chance (the mean of correct / choices per item) with a 95% Wilson interval and the library's verdict
(a z-test against a guesser). Two controls: the untrained model, and the same models scoring the choices with
the question removed — if the pick barely changes, the model is judging the answers, not answering the
question. The library's own report (``evaluate_choices``, what ``mmlab eval`` prints) is computed from the
same scores.
"""

import math

from _common import (
    MODELS,
    NO_QUESTION,
    RULES,
    cli_samples,
    lesson_models,
    library_report,
    mean,
    model_settings,
    score_items,
)
from _common import task_items as load_task

from mmlab.eval.choice import CHOICE_TASKS
from mmlab.eval.stats import accuracy_vs_chance
from mmlab.lab import Experiment
from mmlab.lab.plots import figure

TASKS = ("arc-easy-test", "commonsenseqa-val", "hellaswag-100")
SHORT = {"arc-easy-test": "ARC-Easy", "commonsenseqa-val": "CommonsenseQA", "hellaswag-100": "HellaSwag-100"}


def main(exp: Experiment) -> None:
    limit = exp.pick(full=None, quick=120, smoke=6)
    models, tok = lesson_models(exp)
    items = {t: load_task(t, limit) for t in TASKS}
    exp.set_config(models=model_settings(exp), items={t: len(v) for t, v in items.items()},
                   limit_per_task=limit or "all", rules=list(RULES),
                   prompts={"question": "Question: {question}\\nAnswer: + ' {choice}'",
                            "completion": "{context} + ' {ending}'"},
                   question_removed_context=NO_QUESTION, interval="Wilson 95%")

    acc, report, control, guesser_sd = {}, {}, {}, {}
    for task in TASKS:
        for name, model in models.items():
            recs = score_items(model, tok, items[task])
            lib = library_report(recs)
            chance = [r["chance"] for r in recs]
            stats = {rule: accuracy_vs_chance([r[rule] for r in recs], chance) for rule in RULES}
            acc[task, name] = stats
            guesser_sd[task] = math.sqrt(sum(c * (1 - c) for c in chance)) / len(chance)  # a guesser's spread
            report[task, name] = lib
            lengths = [r["bytes"] for r in recs]
            c = {"gold_is_shortest": mean([float(min(ls) == ls[g]) for ls, r in zip(lengths, recs, strict=True)
                                           for g in r["item"].gold[:1]]),
                 **{f"{rule.replace(' ', '_')}_picks_shortest": mean([float(ls[r["picks"][rule]] == min(ls))
                                                                      for ls, r in zip(lengths, recs, strict=True)])
                    for rule in ("sum", "per byte")}}
            if name != "random":  # the choices alone, after a neutral context
                alone = score_items(model, tok, items[task], context=NO_QUESTION[CHOICE_TASKS[task]])
                by_item = {id(r["item"]): r for r in alone}
                pairs = [(r, by_item[id(r["item"])]) for r in recs if id(r["item"]) in by_item]
                c["per_byte_question_removed"] = mean([b["per byte"] for _, b in pairs])
                c["per_byte_with_question_same_items"] = mean([a["per byte"] for a, _ in pairs])
                c["same_pick_without_question"] = mean([float(a["picks"]["per byte"] == b["picks"]["per byte"])
                                                        for a, b in pairs])
                c["same_pick_if_independent"] = mean([1 / len(a["item"].choices) for a, _ in pairs])
            control[task, name] = c
            exp.log(f"{task} {name}: n {stats['sum']['n']}, chance {stats['sum']['chance']:.3f}, "
                    + ", ".join(f"{rule} {s['accuracy']:.3f}" for rule, s in stats.items())
                    + f" ({stats['per byte']['verdict']})")
            # the library's acc / acc_norm are the sum / per-byte rules on the same scores
            assert abs(lib["metrics"]["acc_norm"]["accuracy"] - stats["per byte"]["accuracy"]) < 1e-9
            assert abs(lib["metrics"]["acc"]["accuracy"] - stats["sum"]["accuracy"]) < 1e-9

    key = lambda t, m: f"{t}/{m}"  # noqa: E731
    exp.metric("accuracy", {key(t, m): s for (t, m), s in acc.items()})
    exp.metric("controls", {key(t, m): c for (t, m), c in control.items()})
    exp.metric("library_report", {key(t, m): {k: r[k] for k in ("n", "chance", "metrics", "bias", "breakdown")}
                                  for (t, m), r in report.items()})
    arc = report["arc-easy-test", "base"]
    exp.metric("cli_arc_base", cli_samples("arc-easy-test", "" if limit is None else f"--limit {limit}", arc, {
        "task": "arc-easy-test", "n": arc["n"], "chance": arc["chance"], "metrics": {"acc_norm": arc["metrics"][
            "acc_norm"]}, "bias": {k: arc["bias"][k] for k in ("gold_is_shortest", "acc_picks_shortest",
                                                                 "acc_norm_picks_shortest")},
        "failures": arc["failures"][:1]}))

    def ci(s) -> str:
        return f"{s['ci95'][0]:.3f}-{s['ci95'][1]:.3f}"

    exp.table("accuracy", ["task", "model", "items", "chance", "sum", "per token", "per byte", "per byte, 95% CI",
                           "verdict (per byte)"],
              [[SHORT[t], m, s["sum"]["n"], s["sum"]["chance"], s["sum"]["accuracy"], s["per token"]["accuracy"],
                s["per byte"]["accuracy"], ci(s["per byte"]), s["per byte"]["verdict"]] for (t, m), s in acc.items()],
              caption="accuracy = share of items whose top-scoring choice is correct (ties share the credit); the "
                      "three columns compare the choices by summed log-probability, per token and per UTF-8 byte; "
                      "chance = mean over items of correct / choices; CI: Wilson; verdict: the library's z-test "
                      "against a guesser (|z| < 1.96: not distinguishable).")
    exp.table("controls", ["task", "model", "per byte, with question", "per byte, question removed",
                           "same pick without question", "same pick if unrelated", "sum picks shortest",
                           "per byte picks shortest", "answer is shortest"],
              [[SHORT[t], m, c.get("per_byte_with_question_same_items"), c.get("per_byte_question_removed"),
                c.get("same_pick_without_question"), c.get("same_pick_if_independent"), c["sum_picks_shortest"],
                c["per_byte_picks_shortest"], c["gold_is_shortest"]] for (t, m), c in control.items()],
              caption=f"question removed: the choices scored after {NO_QUESTION['question']!r} (ARC, CommonsenseQA) "
                      "or after nothing but <|endoftext|> (HellaSwag); 'same pick if unrelated' is the mean of 1 / "
                      "choices, what two unrelated picks would share; shortest = fewest UTF-8 bytes.")

    # ---- findings ----
    half = {k: (s["per byte"]["ci95"][1] - s["per byte"]["ci95"][0]) / 2 for k, s in acc.items()}
    above = {k: max(s[rule]["accuracy"] for rule in RULES) - s["sum"]["chance"] for k, s in acc.items()}
    exp.finding("The untrained model is not distinguishable from chance on any task (per-byte scoring)",
                all(not acc[t, "random"]["per byte"]["distinguishable_from_chance"] for t in TASKS),
                **{SHORT[t]: acc[t, "random"]["per byte"]["z_vs_chance"] for t in TASKS})
    exp.finding("The pretrained base is above chance (95%) on at least one task (per-byte scoring)",
                any(acc[t, "base"]["per byte"]["verdict"] == "above chance" for t in TASKS),
                **{f"z_{SHORT[t]}": acc[t, "base"]["per byte"]["z_vs_chance"] for t in TASKS})
    worst = max(above, key=above.get)
    exp.finding("Tiny models score near chance: no model is more than 10 points above chance on any task under "
                "any scoring rule", above[worst] < 0.10, largest_points_above_chance=100 * above[worst],
                where=f"{SHORT[worst[0]]} / {worst[1]}")
    diff = {t: acc[t, "sft"]["per byte"]["accuracy"] - acc[t, "base"]["per byte"]["accuracy"] for t in TASKS}
    exp.finding("SFT on the synthetic tasks moves per-byte accuracy by less than the base's 95% CI half-width on "
                "every task", all(abs(diff[t]) < half[t, "base"] for t in TASKS),
                **{SHORT[t]: diff[t] for t in TASKS})
    spread = {k: max(s[r]["accuracy"] for r in RULES) - min(s[r]["accuracy"] for r in RULES) for k, s in acc.items()}
    widest = max(spread, key=spread.get)
    exp.finding("The scoring rule alone moves some model's accuracy on some task by more than its 95% CI "
                "half-width", spread[widest] > half[widest], largest_spread=spread[widest],
                half_width=half[widest], where=f"{SHORT[widest[0]]} / {widest[1]}")
    exp.finding("Summed log-probability picks the shortest choice more often than per-byte scoring, for every "
                "model on every task", all(c["sum_picks_shortest"] > c["per_byte_picks_shortest"]
                                           for c in control.values()),
                **{f"{SHORT[t]}_{m}": control[t, m]["sum_picks_shortest"] - control[t, m]["per_byte_picks_shortest"]
                   for t in TASKS for m in MODELS})
    z_sum = {k: s["sum"]["z_vs_chance"] for k, s in acc.items()}
    lowest = min(z_sum, key=z_sum.get)
    exp.finding("Summed scoring puts some model below chance (95%) on some task: ignorance alone scores chance, "
                "so the rule's preference runs against the answers",
                any(s["sum"]["verdict"] == "below chance" for s in acc.values()),
                lowest_z=z_sum[lowest], accuracy=acc[lowest]["sum"]["accuracy"], chance=acc[lowest]["sum"]["chance"],
                where=f"{SHORT[lowest[0]]} / {lowest[1]}")
    same = {t: control[t, "base"]["same_pick_without_question"] for t in TASKS}
    exp.finding("On ARC-Easy and CommonsenseQA the base picks the same choice with the question removed on more "
                "than half of the items: it mostly judges the answers, not the question",
                all(same[t] > 0.5 for t in TASKS[:2]), **{SHORT[t]: same[t] for t in TASKS})

    # ---- figure ----
    fig, axes = figure(2, width=6.0)
    ax = axes[0][0]
    width = 0.26
    for j, m in enumerate(MODELS):
        xs = [i + (j - 1) * width for i in range(len(TASKS))]
        ys = [acc[t, m]["per byte"]["accuracy"] for t in TASKS]
        lo = [y - acc[t, m]["per byte"]["ci95"][0] for y, t in zip(ys, TASKS, strict=True)]
        hi = [acc[t, m]["per byte"]["ci95"][1] - y for y, t in zip(ys, TASKS, strict=True)]
        ax.bar(xs, ys, width, color=f"C{j}", label=m, yerr=[lo, hi], capsize=3)
    for i, t in enumerate(TASKS):
        ax.hlines(acc[t, "base"]["sum"]["chance"], i - 1.6 * width, i + 1.6 * width, colors="k", linestyles="--",
                  label="chance" if i == 0 else None)
    ax.set_xticks(range(len(TASKS)), [SHORT[t] for t in TASKS])
    ax.set(ylabel="accuracy (per-byte scoring), 95% CI", title="every model next to chance", ylim=(0, 0.6))
    ax.legend(fontsize=8)
    ax = axes[0][1]
    markers = {"sum": "o", "per token": "s", "per byte": "^"}
    tiny = {"arc-easy-test": "ARC", "commonsenseqa-val": "CSQA", "hellaswag-100": "HS"}
    labels = [f"{tiny[t]} {m}" for t in TASKS for m in MODELS]
    for rule in RULES:
        ax.scatter(range(len(labels)), [acc[t, m][rule]["accuracy"] - acc[t, m][rule]["chance"]
                                        for t in TASKS for m in MODELS], marker=markers[rule], label=rule, s=30)
    for i, t in enumerate(t for t in TASKS for _ in MODELS):
        ax.vlines(i, -1.96 * guesser_sd[t], 1.96 * guesser_sd[t], colors="0.7", lw=6, alpha=0.5, zorder=0,
                  label="95% range of a guesser's score" if i == 0 else None)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=45, ha="right")
    ax.set(ylabel="accuracy minus chance", title="three scoring rules")
    ax.legend(fontsize=8)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
