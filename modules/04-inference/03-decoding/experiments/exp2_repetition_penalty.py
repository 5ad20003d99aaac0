"""What does a repetition penalty fix in greedy decoding, and what does it cost?

Greedy decoding of a small model falls into loops: once a phrase is the most likely continuation of itself,
it comes back again and again. The CTRL repetition penalty (Keskar et al. 2019; ``repetition_penalty`` in
``mmlab.infer.generate``) divides the logit of every token already in the text — prompt included — by the
penalty (multiplies it when negative). The lessons' TinyStories model (``_common.py``) continues held-out
story openings greedily with penalties from 1.0 (off) to 2.0, and with sampling at T=0.8 with and without a
penalty of 1.2. Measured beside the repetition (repeated 4-grams, samples stuck in a loop): what the penalty
costs — the likelihood of the text under the unpenalised model, invented words, whether the story's main
character (the name after "named" in the prompt) is mentioned again, and how long sentences get (the penalty
also hits full stops). The stories' own continuations are the reference.
"""

import re
from itertools import pairwise

from _common import (
    clean_cut,
    continuation_nats,
    invented_share,
    looping_share,
    repeated_share,
    sample_texts,
    stop_ids,
    story_prompts,
    target,
    text_stats,
    words,
)

from mmlab.infer.generate import generate
from mmlab.lab import Experiment
from mmlab.lab.plots import figure

PENALTIES = [1.0, 1.1, 1.2, 1.3, 1.5, 2.0]
SAMPLED = {"T=0.8": 1.0, "T=0.8, penalty 1.2": 1.2}
NAME = re.compile(r"named ([A-Z][a-z]+)")


def name_recall(names: list[str | None], texts: list[str]) -> float:
    """The share of continuations that mention the prompt's named character again (prompts with a name)."""
    hits = [bool(re.search(rf"\b{n}\b", t)) for n, t in zip(names, texts, strict=True) if n]
    return sum(hits) / len(hits) if hits else float("nan")


def words_per_sentence(texts: list[str]) -> float:
    ws = [w for t in texts for w in words(t)]
    ends = sum(w in ".!?" for w in ws)
    return sum(w[0].isalnum() for w in ws) / max(ends, 1)


def main(exp: Experiment) -> None:
    n_prompts = exp.pick(full=128, quick=48, smoke=2)
    prompt_len = exp.pick(full=24, quick=24, smoke=8)
    new_tokens = exp.pick(full=96, quick=64, smoke=16)
    model, tok, base = target(exp)
    pairs = story_prompts(tok, n_prompts, prompt_len, new_tokens)
    prompts = [p for p, _ in pairs]
    names = [m[1] if (m := NAME.search(tok.decode(p))) else None for p in prompts]
    exp.set_config(model=base, penalties=PENALTIES, sampled=SAMPLED, prompts=n_prompts, prompt_tokens=prompt_len,
                   new_tokens=new_tokens, prompts_with_a_name=sum(n is not None for n in names),
                   prompt_source="tinystories-valid-1k (held out)")

    runs = {f"greedy, penalty {p}": {"temperature": 0.0, "repetition_penalty": p} for p in PENALTIES}
    runs |= {name: {"temperature": 0.8, "repetition_penalty": p} for name, p in SAMPLED.items()}
    stats, first, show = {}, {}, clean_cut(tok, pairs)
    for i, (name, params) in enumerate(runs.items()):
        outs = []
        for start in range(0, len(prompts), 128):
            outs += generate(model, prompts[start:start + 128], new_tokens, stop_tokens=stop_ids(tok),
                             seed=exp.seed * 1000 + i * 100 + start, **params)
        texts = [tok.decode(o) for o in outs]
        stats[name] = text_stats(tok, model, prompts, outs, 1) | {"name_recall": name_recall(names, texts),
                                                                  "words_per_sentence": words_per_sentence(texts)}
        first[name] = outs[show]
        exp.log(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in stats[name].items()))
    human_texts = [tok.decode(c) for _, c in pairs]
    human_ws = [words(t) for t in human_texts]
    nats, count = continuation_nats(model, pairs)
    human = {"repeated4": repeated_share(human_ws), "looping": looping_share(human_ws), "nll": nats / count,
             "invented": invented_share(human_ws), "name_recall": name_recall(names, human_texts),
             "words_per_sentence": words_per_sentence(human_texts)}
    exp.log(f"human: {human}")

    exp.metric("runs", stats)
    exp.metric("human", human)
    exp.metric("samples", sample_texts(tok, prompts[show], {n: first[n] for n in ("greedy, penalty 1.0",
                                                                               "greedy, penalty 1.2",
                                                                               "greedy, penalty 2.0")}))
    keys = ["repeated4", "looping", "nll", "invented", "name_recall", "words_per_sentence"]
    exp.table("penalty", ["decoding", "repeated 4-grams", "samples in a loop", "NLL under the model (nats/token)",
                          "invented words", "names mentioned again", "words per sentence"],
              [[name, *(s[k] for k in keys)] for name, s in stats.items()] +
              [["human text (the story's own continuation)", *(human[k] for k in keys)]],
              caption=f"{n_prompts} held-out story openings of {prompt_len} tokens, continued for up to {new_tokens} "
                      "tokens; one sample per prompt and setting. NLL: under the model without a penalty, at T=1. "
                      f"Names: the share of continuations that mention the character named in the prompt again "
                      f"({sum(n is not None for n in names)} prompts name one).")

    # ---- findings ----
    g = {p: stats[f"greedy, penalty {p}"] for p in PENALTIES}
    exp.finding("Without a penalty, at least one greedy sample in ten gets stuck in a loop",
                g[1.0]["looping"] >= 0.1, looping=g[1.0]["looping"], human=human["looping"])
    exp.finding("A penalty of 1.2 cuts greedy's repeated 4-grams by at least half", g[1.2]["repeated4"] <=
                0.5 * g[1.0]["repeated4"], penalty_1_2=g[1.2]["repeated4"], off=g[1.0]["repeated4"])
    rep = [g[p]["repeated4"] for p in PENALTIES]
    exp.finding("Repeated 4-grams never rise as the penalty grows (1.0 to 2.0)", all(a >= b for a, b in pairwise(rep)),
                **{f"p{p}": g[p]["repeated4"] for p in PENALTIES})
    nll = [g[p]["nll"] for p in PENALTIES]
    exp.finding("The price in likelihood: the NLL under the model rises at every step of the penalty",
                all(a < b for a, b in pairwise(nll)), **{f"p{p}": g[p]["nll"] for p in PENALTIES})
    exp.finding("A strong penalty (2.0) gives text the model finds less probable than without a penalty",
                g[2.0]["nll"] > g[1.0]["nll"], penalty_2=g[2.0]["nll"], off=g[1.0]["nll"])
    exp.finding("A strong penalty (2.0) makes the model invent words at least twice as often as human text",
                g[2.0]["invented"] >= 2 * human["invented"], penalty_2=g[2.0]["invented"], human=human["invented"])
    exp.finding("A strong penalty (2.0) makes the story forget its character: the name comes back less often than "
                "without a penalty", g[2.0]["name_recall"] < g[1.0]["name_recall"], penalty_2=g[2.0]["name_recall"],
                off=g[1.0]["name_recall"], human=human["name_recall"])
    exp.finding("A strong penalty (2.0) makes sentences longer than without one (full stops are penalised too)",
                g[2.0]["words_per_sentence"] > g[1.0]["words_per_sentence"], penalty_2=g[2.0]["words_per_sentence"],
                off=g[1.0]["words_per_sentence"], human=human["words_per_sentence"])
    exp.finding("Sampling at T=0.8 without a penalty repeats less than greedy with penalty 1.2",
                stats["T=0.8"]["repeated4"] < g[1.2]["repeated4"], sampled=stats["T=0.8"]["repeated4"],
                greedy_1_2=g[1.2]["repeated4"])

    # ---- plot ----
    fig, axes = figure(3)
    panels = [("repeated4", "repeated 4-grams", "what the penalty fixes"),
              ("nll", "NLL under the model (nats/token)", "what it costs: likelihood"),
              ("name_recall", "continuations naming the character again", "what it costs: coherence")]
    for ax, (key, label, title) in zip(axes[0], panels, strict=True):
        ax.plot(PENALTIES, [g[p][key] for p in PENALTIES], "o-", label="greedy")
        for i, (name, p) in enumerate(SAMPLED.items()):
            ax.scatter([p], [stats[name][key]], marker="s", color=f"C{i + 1}", s=40, zorder=3, label=name)
        ax.axhline(human[key], color="k", ls="--", lw=1, label="human text")
        ax.set(xlabel="repetition penalty", ylabel=label, title=title)
    axes[0][0].legend(fontsize=8)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
