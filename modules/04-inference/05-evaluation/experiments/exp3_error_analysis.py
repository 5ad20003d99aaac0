"""Where does the SFT model fail? Exact match on the synthetic tasks split by category — task, carries, operand
size, word length, prompts seen in training — the shape of its wrong answers, and GSM8K, where it scores 0.

The post-training lessons' SFT model and, as a control, the pretrained base it started from (see
``_common.py``), answer held-out synthetic tasks greedily through the chat template (``mmlab.eval.exact.
ModelAnswerer``, what ``mmlab eval --task synthetic-tasks`` runs: the same seed) and GSM8K test questions
(``--task gsm8k-test``: the number after ``####``, else the last number, must equal the reference). One
answer per item; the library's ``evaluate_exact`` grades them and breaks accuracy down by task kind and answer
length, and this script adds the categories that explain *why*: does an addition carry, does a subtraction
borrow, how many digits, how long a word, was this exact prompt in the SFT training split? For the wrong
answers we ask what they look like: a number of the right length, the right letters in the wrong order, the
word copied instead of reversed, another object of the toy world. Every accuracy comes with its 95% Wilson
interval; on GSM8K the interval says how little "0 right" tells us about a bigger model.
"""

import re

from _common import cli_samples, lesson_models, model_settings

from mmlab.data.registry import dataset_path
from mmlab.data.synthetic import OBJECTS, TASKS
from mmlab.data.verifiable import normalise_number
from mmlab.eval.exact import (
    SYNTHETIC_SEED,
    ModelAnswerer,
    evaluate_exact,
    grade,
    gsm8k_items,
    shuffled_chance,
    synthetic_items,
)
from mmlab.eval.stats import accuracy_vs_chance
from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.lab.posttrain import lesson_sft, sft_settings
from mmlab.train.sft import split_heldout, task_conversations

ARITH = re.compile(r"What is (\d+) ([-+*]) (\d+)\?")
WORD = re.compile(r"the letters: (\w+)")
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def categories(item, seen: set[str]) -> dict[str, str]:
    """The categories one synthetic item belongs to (name -> value)."""
    cats = {"kind": item.kind, "prompt in SFT training": "seen" if item.question in seen else "unseen"}
    m = ARITH.match(item.question)
    if m:
        a, op, b = int(m[1]), m[2], int(m[3])
        if op == "*":  # a rule (x * 0 = 0, x * 1 = x) or a table to memorise
            cats["factors"] = "mul, a factor 0 or 1" if min(a, b) <= 1 else "mul, both factors >= 2"
        elif op == "+":
            cats["carry"] = "add with carry" if a % 10 + b % 10 >= 10 else "add, no carry"
        elif op == "-":
            cats["carry"] = "sub with borrow" if a % 10 < b % 10 else "sub, no borrow"
    w = WORD.search(item.question)
    if w:
        cats["word length"] = f"{item.kind}, {len(w[1])} letters"
    return cats


def error_type(item, got: str | None) -> str:
    """What a wrong answer looks like."""
    if not got:
        return "empty"
    ref = item.answer
    if item.kind in ("add", "sub", "mul"):
        if not re.fullmatch(r"-?\d+", got):
            return "not a number"
        if len(got) != len(ref):
            return "wrong number of digits"
        return "right length, last digit right" if got[-1] == ref[-1] else "right length, last digit wrong"
    if item.kind in ("copy", "reverse"):
        word = WORD.search(item.question)[1]
        if item.kind == "reverse" and got == word:
            return "copied instead of reversed"
        if sorted(got) == sorted(ref):
            return "right letters, wrong order"
        return "right length, other letters" if len(got) == len(ref) else "wrong length"
    return "another object of the world" if got in OBJECTS else "not an object of the world"


def gsm8k_shape(completion: str) -> str:
    """Which synthetic task's answer a GSM8K completion looks like (what SFT taught the model to say)."""
    text = completion.strip()
    if re.fullmatch(r"-?\d+", text):
        return "a bare number"
    if text in OBJECTS:
        return "an object of the toy world"
    if re.fullmatch(r"[a-j]+", text):
        return "a string of letters"
    return "a number inside text" if NUMBER.search(text) else "text without a number"


def main(exp: Experiment) -> None:
    n_items = exp.pick(full=2400, quick=600, smoke=12)
    n_gsm = exp.pick(full=None, quick=150, smoke=4)
    models, tok = lesson_models(exp, ("base", "sft"))
    sft_run = lesson_sft(exp)
    s = sft_settings(exp)
    train, _ = split_heldout(task_conversations(s["n_synthetic"], s["train"]["seed"]), 0.1, seed=s["train"]["seed"])
    seen = {c[0]["content"] for c in train}
    items = synthetic_items(n_items, SYNTHETIC_SEED)
    math_items = gsm8k_items(dataset_path("gsm8k-test"), n_gsm)
    exp.set_config(models=model_settings(exp), sft_checkpoint=str(sft_run), synthetic_items=len(items),
                   synthetic_seed=SYNTHETIC_SEED, gsm8k_items=len(math_items), decoding="greedy",
                   max_new_tokens={"synthetic-tasks": 16, "gsm8k-test": 256}, sft_training_prompts=len(seen))

    reports, records = {}, {}
    for name, model in models.items():
        answer = ModelAnswerer(model, tok, 16, single_line=True)
        completions = {q: answer(q) for q in dict.fromkeys(it.question for it in items)}  # greedy: once per prompt
        reports[name, "synthetic"] = evaluate_exact(items, completions.get)
        recs = []
        for it in items:
            if completions[it.question] is not None:
                ok, got = grade(it, completions[it.question])
                recs.append({"item": it, "correct": float(ok), "got": got, **categories(it, seen)})
        records[name] = recs
        m = reports[name, "synthetic"]["metrics"]["exact_match"]
        exp.log(f"{name} synthetic: exact match {m['accuracy']:.3f} on {m['n']}")
        gsm = ModelAnswerer(model, tok, 256, single_line=False)
        gsm_completions = {q: gsm(q) for q in dict.fromkeys(it.question for it in math_items)}
        reports[name, "gsm8k"] = evaluate_exact(math_items, gsm_completions.get)
        records[name, "gsm8k"] = [(it, c) for it, c in ((it, gsm_completions[it.question]) for it in math_items)
                                  if c is not None]
        g = reports[name, "gsm8k"]
        exp.log(f"{name} gsm8k: exact match {g['metrics']['exact_match']['accuracy']:.3f} on {g['n']} "
                f"({g['skipped']})")

    # ---- synthetic tasks: accuracy by category (the SFT model) ----
    sft = records["sft"]
    for kind in TASKS:  # chance: the model's own answers shuffled within the task
        rs = [r for r in sft if r["kind"] == kind]
        for r, c in zip(rs, shuffled_chance([r["item"].answer for r in rs], [r["got"] for r in rs]), strict=True):
            r["chance"] = c

    def acc(rs) -> dict:
        return accuracy_vs_chance([r["correct"] for r in rs], [r["chance"] for r in rs])

    cells = {}
    for cat in ("kind", "carry", "factors", "prompt in SFT training", "word length"):
        values = sorted({r[cat] for r in sft if cat in r})
        for v in values:
            cells[cat, v] = acc([r for r in sft if r.get(cat) == v])
    for kind in TASKS:  # memory or skill: the same task, prompts seen in training against unseen ones
        for v in ("seen", "unseen"):
            rs = [r for r in sft if r["kind"] == kind and r["prompt in SFT training"] == v]
            if rs:
                cells[f"{kind}: prompt in SFT training", v] = acc(rs)
    exp.metric("synthetic_by_category", {f"{c} = {v}": s for (c, v), s in cells.items()})
    exp.metric("library_report", {f"{m}/{t}": {k: r[k] for k in ("n", "skipped", "metrics", "no_answer",
                                                                 "breakdown", "failures")}
                                  for (m, t), r in reports.items()})

    def ci(s) -> str:
        return f"{s['ci95'][0]:.3f}-{s['ci95'][1]:.3f}"

    exp.table("by_category", ["split by", "category", "items", "exact match", "95% CI", "chance, answers shuffled"],
              [[c, v, s["n"], s["accuracy"], ci(s), s["chance"]] for (c, v), s in cells.items()],
              caption=f"the SFT model, greedy, {len(sft)} held-out synthetic items (seed {SYNTHETIC_SEED}, the "
                      "default of `mmlab eval --task synthetic-tasks`); 'seen' = the exact prompt is in the SFT "
                      "training split (multiplication and facts come from small sets, so most are); chance: the "
                      "score of the model's own answers shuffled among the questions of the same task.")

    # ---- what the wrong answers look like ----
    errors = {}
    for kind in TASKS:
        wrong = [r for r in sft if r["kind"] == kind and not r["correct"]]
        types = [error_type(r["item"], r["got"]) for r in wrong]
        errors[kind] = {"wrong": len(wrong), **{t: types.count(t) / len(types) for t in sorted(set(types))}}
    exp.metric("error_types", errors)
    exp.table("error_types", ["task", "wrong answers", "what they look like (share of the wrong answers)"],
              [[k, e["wrong"], ", ".join(f"{t} {v:.0%}" for t, v in e.items() if t != "wrong") or "—"]
               for k, e in errors.items()],
              caption="the SFT model's wrong synthetic answers by shape; 'last digit' = the ones digit.")
    exp.metric("synthetic_failure_samples", [
        {"title": f"{r['item'].kind}: {r['item'].question}",
         "text": f"reference: {r['item'].answer}\nanswer:    {r['got']}\n({error_type(r['item'], r['got'])})"}
        for kind in TASKS for r in [x for x in sft if x["kind"] == kind and not x["correct"]][:1]])

    # ---- GSM8K ----
    gsm_rows, shapes, samples, gsm_shuffled = [], {}, [], {}
    for name in models:
        g = reports[name, "gsm8k"]
        comps = records[name, "gsm8k"]
        got = [grade(it, c)[1] for it, c in comps]
        refs = [normalise_number(it.answer) for it, _ in comps]
        gsm_shuffled[name] = accuracy_vs_chance([float(a == r) for a, r in zip(got, refs, strict=True)],
                                                shuffled_chance(refs, got))
        in_question = [x for x, (it, _) in zip(got, comps, strict=True) if x is not None
                       and x in {n.replace(",", "") for n in NUMBER.findall(it.question)}]
        sh = [gsm8k_shape(c) for _, c in comps]
        shapes[name] = {t: sh.count(t) / len(sh) for t in sorted(set(sh))} if sh else {}
        m = g["metrics"]["exact_match"]
        sh_stats = gsm_shuffled[name]
        gsm_rows.append([name, len(math_items), g["n"], m["accuracy"], ci(m), sh_stats["chance"],
                         sh_stats["verdict"], g["no_answer"],
                         len(in_question) / max(1, sum(x is not None for x in got)),
                         ", ".join(f"{t} {v:.0%}" for t, v in shapes[name].items())])
        samples += [{"title": f"{name}, {it.source}: {it.question[:150]}{'...' if len(it.question) > 150 else ''}",
                     "text": f"reference: {it.answer}\ncompletion: {c.strip()[:200]}\nextracted: {grade(it, c)[1]}"}
                    for it, c in comps[:2]]
    syn, gsm = reports["sft", "synthetic"], reports["sft", "gsm8k"]
    synthetic_cli = cli_samples("synthetic-tasks", f"--limit {len(items)}", syn, {
        "task": "synthetic-tasks", "n": syn["n"], "chance": syn["chance"], "metrics": syn["metrics"],
        "no_answer": syn["no_answer"], "breakdown": {"by_kind": {k: syn["breakdown"]["by_kind"][k]
                                                                 for k in ("add", "fact")}},
        "failures": syn["failures"][:1]})
    # the GSM8K run: what it prints (`mmlab eval` refuses a run where no question fits the context)
    gsm_cli = cli_samples("gsm8k-test", "" if n_gsm is None else f"--limit {n_gsm}", gsm, {}) if gsm["n"] else []
    exp.metric("cli_sft", [*synthetic_cli, *gsm_cli[:1]])
    exp.metric("gsm8k_shapes", shapes)
    exp.metric("gsm8k_samples", samples)
    exp.metric("gsm8k_vs_shuffled_answers", gsm_shuffled)
    exp.table("gsm8k", ["model", "questions", "scored (fit the context)", "exact match", "95% CI",
                        "chance, answers shuffled", "verdict against it", "no number at all",
                        "extracted number copied from the question", "what the completions are"],
              gsm_rows, caption="GSM8K test, greedy through the chat template, up to 256 new tokens within the "
                                "model's 128-token context; questions that fill the context are skipped and counted.")

    # ---- findings ----
    by_kind = {k: cells["kind", k]["accuracy"] for k in TASKS}
    exp.finding("The SFT model's exact match depends on the task: the best kind is at least 30 points above the "
                "worst", max(by_kind.values()) - min(by_kind.values()) >= 0.30, **by_kind)
    rule, table = cells.get(("factors", "mul, a factor 0 or 1")), cells.get(("factors", "mul, both factors >= 2"))
    exp.finding("Multiplying by 0 or 1 (a rule) is right more often than other products (a table to memorise)",
                bool(rule and table and rule["accuracy"] > table["accuracy"]),
                rule=rule["accuracy"] if rule else None, table=table["accuracy"] if table else None,
                n_rule=rule["n"] if rule else 0)
    add_err = errors["add"]
    right_len = add_err.get("right length, last digit right", 0) + add_err.get("right length, last digit wrong", 0)
    exp.finding("Most wrong sums have the right number of digits: the model gets the size of the answer, not its "
                "digits", right_len > 0.5, right_length=right_len, wrong=add_err["wrong"])
    short = [r for r in sft if r["kind"] == "reverse" and len(r["item"].answer) <= 4]
    long = [r for r in sft if r["kind"] == "reverse" and len(r["item"].answer) >= 7]
    short_acc, long_acc = acc(short)["accuracy"], acc(long)["accuracy"]
    exp.finding("Reversal fails with length: words of 3-4 letters are reversed correctly more often than words of "
                "7-8", bool(short and long and short_acc > long_acc), short=short_acc, long=long_acc,
                n_short=len(short), n_long=len(long))
    # memory or skill? Pooled over kinds, "seen" mixes in which kinds repeat (mul, fact); within a kind it does not
    pooled = cells["prompt in SFT training", "seen"]["accuracy"] - cells["prompt in SFT training", "unseen"]["accuracy"]
    both = [k for k in TASKS if (f"{k}: prompt in SFT training", "seen") in cells
            and (f"{k}: prompt in SFT training", "unseen") in cells]
    weights = {k: cells[f"{k}: prompt in SFT training", "seen"]["n"] for k in both}
    within = (sum(weights[k] * (cells[f"{k}: prompt in SFT training", "seen"]["accuracy"]
                                - cells[f"{k}: prompt in SFT training", "unseen"]["accuracy"]) for k in both)
              / max(1, sum(weights.values())))
    exp.metric("seen_minus_unseen", {"pooled": pooled, "within_kinds": within, "kinds_with_both": both})
    exp.finding("Seen prompts score higher than unseen ones pooled over all tasks, but much less so within a task "
                "kind: most of the pooled gap comes from which tasks repeat (multiplication, facts)",
                pooled > 0 and within < pooled / 2, pooled_gap=pooled, within_kind_gap=within)
    base_acc = reports["base", "synthetic"]["metrics"]["exact_match"]["accuracy"]
    exp.finding("The pretrained base answers (almost) no synthetic item: under 5% exact match",
                base_acc < 0.05, base=base_acc, sft=reports["sft", "synthetic"]["metrics"]["exact_match"]["accuracy"])
    g, gs = reports["sft", "gsm8k"]["metrics"]["exact_match"], gsm_shuffled["sft"]
    exp.finding("On GSM8K the SFT model is no better than its own answers shuffled among the questions: its hits "
                "are coincidences", g["n"] > 0 and gs["verdict"] != "above chance", accuracy=g["accuracy"],
                shuffled_chance=gs["chance"], z=gs["z_vs_chance"], ci_high=g["ci95"][1], n=g["n"])
    fact = cells["kind", "fact"]["chance"]
    exp.finding("Chance is not 0 for every open answer: the SFT model's fact answers, shuffled among the fact "
                "questions, would still score over 5%", fact > 0.05, fact_shuffled_chance=fact)
    synthetic_like = sum(v for t, v in shapes["sft"].items() if t in ("a bare number", "an object of the toy world",
                                                                      "a string of letters"))
    exp.finding("Most of the SFT model's GSM8K completions have the shape of a synthetic-task answer (a bare "
                "number, a toy-world object or letters): it answers the tasks it was taught",
                synthetic_like > 0.5, share=synthetic_like)

    # ---- figure ----
    fig, axes = figure(2, width=6.0)
    ax = axes[0][0]
    rows = [(c, v, s) for (c, v), s in cells.items() if c in ("kind", "carry", "factors")]
    ys = range(len(rows))
    ax.barh(ys, [s["accuracy"] for _, _, s in rows],
            xerr=[[s["accuracy"] - s["ci95"][0] for *_, s in rows], [s["ci95"][1] - s["accuracy"] for *_, s in rows]],
            color=[{"kind": "C0", "carry": "C1", "factors": "C2"}[c] for c, _, _ in rows], capsize=2)
    ax.set_yticks(list(ys), [v for _, v, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="exact match (95% CI)", title="SFT model: where it fails", xlim=(0, 1))
    ax = axes[0][1]
    kinds = [k for k in TASKS if errors[k]["wrong"]]
    types = sorted({t for k in kinds for t in errors[k] if t != "wrong"})
    left = [0.0] * len(kinds)
    for i, t in enumerate(types):
        vals = [errors[k].get(t, 0) for k in kinds]
        ax.barh(range(len(kinds)), vals, left=left, color=f"C{i % 10}", label=t)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.set_yticks(range(len(kinds)), [f"{k} ({errors[k]['wrong']} wrong)" for k in kinds], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="share of the wrong answers", title="what the wrong answers look like", xlim=(0, 1))
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
