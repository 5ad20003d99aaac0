"""Does training on step-by-step traces beat training on answers, and does the model need to think at inference?

Three SFT runs of the lessons' pretrained base on the same 20,000 multi-step arithmetic problems (1-4 steps of
+ and -), the same 1,200 steps: the answers only (an empty think block), the traces (the worked steps in a think
block, then the answer), or each problem in one of the two at random (hybrid). Each model answers held-out
problems of 2, 3, 4 and 5 steps (5: longer than any training problem) greedily, with thinking on (the model
writes what it was trained to), off (the prompt ends with an empty think block) and opened (the reply starts
with ``<think>\\n`` written for the model). Measured: exact match of the answer after the think block, by number
of steps, the share of replies that think, and the tokens spent thinking.
"""

from _common import HELDOUT_STEPS, MAX_NEW, STYLES, by_steps, heldout, load, sft_settings

from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.lab.posttrain import reasoning_accuracy

MODES = ("on", "off", "opened")
COLORS = {"answers": "tab:grey", "traces": "tab:blue", "hybrid": "tab:orange"}


def main(exp: Experiment) -> None:
    problems = heldout(exp)
    exp.set_config(sft={s: sft_settings(exp, s) for s in STYLES}, heldout_problems=len(problems),
                   heldout_steps=list(HELDOUT_STEPS), max_new_tokens=MAX_NEW, decoding="greedy")
    runs = {}
    for style in STYLES:
        model, tok = load(exp, style)
        for mode in MODES:
            r = reasoning_accuracy(model, tok, problems, think=mode != "off", force_open=mode == "opened",
                                   max_new_tokens=MAX_NEW)[None]
            runs[(style, mode)] = r
            exp.log(f"{style:8s} thinking {mode:6s}: exact match {r['accuracy']['all']:.3f}, "
                    f"{r['think_tokens']['all']:.1f} thinking tokens, thought {r['thought']:.2f}")
    exp.metric("runs", {f"{s}/{m}": r for (s, m), r in runs.items()})
    rows = [[style, mode, *by_steps(r["accuracy"]), r["accuracy"]["all"], r["thought"], r["think_tokens"]["all"]]
            for (style, mode), r in runs.items()]
    exp.table("compare", ["SFT data", "thinking", *(f"{k} steps" for k in HELDOUT_STEPS), "all",
                          "replies that think", "thinking tokens"], rows,
              caption=f"Held-out exact match, {len(problems)} problems ({len(problems) // len(HELDOUT_STEPS)} per "
                      "step count; 5 steps is longer than any training problem), greedy, one seed. Thinking on: "
                      "the model writes what it learned; off: an empty think block in the prompt; opened: "
                      "`<think>\\n` written for the model. Replies that think: a non-empty think block. Thinking "
                      "tokens: mean tokens written inside the think block after `<think>\\n`, its close included.")
    tokens = runs[("traces", "on")]["think_tokens"]
    exp.table("tokens", ["steps", "thinking tokens (traces model, thinking on)"],
              [[k, tokens.get(f"{k} steps")] for k in HELDOUT_STEPS])

    acc = {key: by_steps(r["accuracy"]) for key, r in runs.items()}
    trained = range(len(HELDOUT_STEPS) - 1)  # 2, 3 and 4 steps: lengths the SFT problems had
    exp.finding("With thinking on, SFT on traces beats SFT on answers at every trained length (2-4 steps)",
                all(acc[("traces", "on")][i] > acc[("answers", "on")][i] for i in trained),
                **{f"traces_{k}": acc[("traces", "on")][i] for i, k in enumerate(HELDOUT_STEPS[:-1])},
                **{f"answers_{k}": acc[("answers", "on")][i] for i, k in enumerate(HELDOUT_STEPS[:-1])})
    exp.finding("The traces model carries over to 5 steps, one more than it trained on (at least half its "
                "4-step accuracy)", acc[("traces", "on")][-1] >= 0.5 * acc[("traces", "on")][-2],
                four_steps=acc[("traces", "on")][-2], five_steps=acc[("traces", "on")][-1])
    off = runs[("traces", "off")]["accuracy"]["all"]
    exp.finding("With thinking switched off, the traces model is no better than the answers model (within 0.05)",
                off <= runs[("answers", "off")]["accuracy"]["all"] + 0.05, traces_off=off,
                answers_off=runs[("answers", "off")]["accuracy"]["all"])
    exp.finding("Left to choose, the hybrid model thinks on most problems (at least 90% of replies think)",
                runs[("hybrid", "on")]["thought"] >= 0.9, hybrid_on=runs[("hybrid", "on")]["thought"],
                traces_on=runs[("traces", "on")]["thought"])
    exp.finding("One hybrid model keeps both modes: with the think block opened for it within 0.05 of the traces "
                "model, thinking off within 0.05 of the answers model",
                abs(runs[("hybrid", "opened")]["accuracy"]["all"] - runs[("traces", "on")]["accuracy"]["all"]) <= 0.05
                and abs(runs[("hybrid", "off")]["accuracy"]["all"] - runs[("answers", "off")]["accuracy"]["all"])
                <= 0.05, hybrid_opened=runs[("hybrid", "opened")]["accuracy"]["all"],
                traces_on=runs[("traces", "on")]["accuracy"]["all"],
                hybrid_off=runs[("hybrid", "off")]["accuracy"]["all"],
                answers_off=runs[("answers", "off")]["accuracy"]["all"])
    spent = by_steps(tokens)
    exp.finding("The traces model spends more thinking tokens on longer problems (2 < 3 < 4 steps)",
                spent[0] < spent[1] < spent[2], **{f"steps_{k}": v for k, v in zip(HELDOUT_STEPS, spent, strict=True)})

    fig, axes = figure(2)
    ax = axes[0][0]
    for (style, mode), a in acc.items():
        ax.plot(HELDOUT_STEPS, a, marker="o", ls={"on": "-", "off": "--", "opened": ":"}[mode],
                color=COLORS[style], label=f"{style}, thinking {mode}")
    ax.axvspan(4.5, 5.5, color="grey", alpha=0.15, label="longer than training")
    ax.set(xlabel="steps in the problem", ylabel="held-out exact match", xticks=list(HELDOUT_STEPS),
           title="answers vs traces, thinking on vs off", ylim=(-0.02, 1.02))
    ax.legend(fontsize=7)
    ax = axes[0][1]
    for (style, mode), r in runs.items():
        if mode != "off":
            ax.plot(HELDOUT_STEPS, by_steps(r["think_tokens"]), marker="o", color=COLORS[style],
                    ls={"on": "-", "opened": ":"}[mode], label=f"{style}, thinking {mode}")
    ax.set(xlabel="steps in the problem", ylabel="mean thinking tokens", xticks=list(HELDOUT_STEPS),
           title="tokens spent thinking")
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
