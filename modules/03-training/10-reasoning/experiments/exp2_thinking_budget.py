"""How much thinking does an answer need? Accuracy against a budget of thinking tokens.

The traces model and the hybrid model of ``exp1`` answer the held-out problems with thinking on, but with at
most N tokens of thinking: when a model has not closed its think block after N tokens, the block is cut there,
closed (``\\n</think>\\n\\n``) and the model must answer from what it wrote (budget forcing, the cut side of the
s1 paper's). A budget of 0 is thinking off; an unlimited budget is plain thinking on. Measured: exact match by
number of steps at each budget, and the tokens a full trace takes.
"""

from _common import HELDOUT_STEPS, MAX_NEW, by_steps, heldout, load, sft_settings

from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.lab.posttrain import reasoning_accuracy

MODELS = ("traces", "hybrid")


def main(exp: Experiment) -> None:
    problems = heldout(exp)
    budgets = exp.pick([0, 8, 16, 24, 32, 40, 48, 56, 64, None], [0, 16, 32, 48, None], [0, 8, None])
    exp.set_config(sft={m: sft_settings(exp, m) for m in MODELS}, heldout_problems=len(problems),
                   budgets=[b if b is not None else "unlimited" for b in budgets], max_new_tokens=MAX_NEW,
                   forced_close="\n</think>\n\n",
                   decoding="greedy")
    runs = {}
    for style in MODELS:
        model, tok = load(exp, style)
        runs[style] = reasoning_accuracy(model, tok, problems, think=True, budgets=budgets, max_new_tokens=MAX_NEW)
        exp.log(f"{style}: " + ", ".join(f"{b}: {r['accuracy']['all']:.3f}" for b, r in runs[style].items()))
    label = {b: "unlimited" if b is None else str(b) for b in budgets}
    exp.metric("runs", {s: {label[b]: r for b, r in rs.items()} for s, rs in runs.items()})
    rows = [[label[b], *by_steps(r["accuracy"]), r["accuracy"]["all"], r["closed"]] for b, r in runs["traces"].items()]
    exp.table("budget", ["thinking budget (tokens)", *(f"{k} steps" for k in HELDOUT_STEPS), "all",
                         "closed by the model"], rows,
              caption=f"The traces model, {len(problems)} held-out problems, greedy, one seed. \"closed by the "
                      "model\": the share of replies whose think block the model ended itself within the budget "
                      "(the rest were cut and closed for it).")
    full = runs["traces"][None]["think_tokens"]
    exp.table("trace_length", ["steps", "thinking tokens, unlimited budget (traces model)"],
              [[k, v] for k, v in zip(HELDOUT_STEPS, by_steps(full), strict=True)])

    acc = {s: [rs[b]["accuracy"]["all"] for b in budgets] for s, rs in runs.items()}
    exp.finding("Accuracy of the traces model never falls as the budget grows",
                all(a <= b + 1e-9 for a, b in zip(acc["traces"], acc["traces"][1:], strict=False)),
                **{f"budget_{label[b]}": a for b, a in zip(budgets, acc["traces"], strict=True)})
    cut = [b for b in budgets if b is not None and b > 0]
    half = {k: t / 2 for k, t in zip(HELDOUT_STEPS, by_steps(full), strict=True)}
    # a budget of about half a problem's trace: does half the thinking buy half the accuracy?
    at_half = []
    for i, k in enumerate(HELDOUT_STEPS[:-1]):
        b = min(cut, key=lambda x: abs(x - half[k]))
        at_half.append((k, b, by_steps(runs["traces"][b]["accuracy"])[i],
                        by_steps(runs["traces"][None]["accuracy"])[i]))
    exp.finding("Half a trace buys something: at the budget nearest half its trace, 2-4-step accuracy is at least "
                "a quarter of its unlimited accuracy", all(a >= 0.25 * full_a for _, _, a, full_a in at_half),
                **{f"steps_{k}_budget_{b}": a for k, b, a, _ in at_half},
                **{f"steps_{k}_unlimited": f for k, _, _, f in at_half})
    exp.finding("At a budget of 0 (no thinking) the hybrid model, which trained on empty think blocks, beats the "
                "traces model", acc["hybrid"][0] > acc["traces"][0], hybrid=acc["hybrid"][0], traces=acc["traces"][0])

    fig, axes = figure(2)
    xs = [b if b is not None else (max(cut) if cut else 0) + 16 for b in budgets]
    ax = axes[0][0]
    for i, k in enumerate(HELDOUT_STEPS):
        ax.plot(xs, [by_steps(runs["traces"][b]["accuracy"])[i] for b in budgets], marker="o", label=f"{k} steps")
        ax.axvline(by_steps(full)[i], color=ax.lines[-1].get_color(), ls=":", lw=1)
    ax.set(xlabel="thinking budget (tokens; rightmost: unlimited)", ylabel="held-out exact match",
           title="traces model: accuracy vs budget (dotted: full trace length)", ylim=(-0.02, 1.02))
    ax.legend()
    ax = axes[0][1]
    for s in MODELS:
        ax.plot(xs, acc[s], marker="o", label=s)
    ax.set(xlabel="thinking budget (tokens; rightmost: unlimited)", ylabel="held-out exact match, all steps",
           title="both models, all problems", ylim=(-0.02, 1.02))
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
