"""How does the way we pick each token trade diversity against quality: greedy, temperature, top-k, top-p?

The lessons' pretrained TinyStories model (4 x 128, see ``_common.py``) continues the openings of held-out
stories with eleven decoding strategies of the library's sampler (``mmlab.infer.generate.generate``):
greedy, temperature 0.5 to 1.3 with no filter, top-k and top-p (nucleus) at temperature 1, and two
combinations. Every prompt gets several samples per strategy. Measured on words (``_common.py``):

* diversity — distinct-2 among the samples of one prompt (1: they share no word pair, 1/samples: identical);
* repetition — the share of 4-grams that repeat one earlier in the same sample, and the share of samples stuck
  in a loop (the second half mostly repeats);
* the model's own view — the mean negative log-likelihood (nats per token) of the text under the model at
  temperature 1 (lower: text the model finds more probable);
* a model-free check of quality — the share of *invented words*, words that never occur in the training text.

The rest of each held-out story (the same number of tokens) is measured the same way: human text is the
reference, not an optimum to beat on any single axis.
"""

from itertools import pairwise

from _common import (
    clean_cut,
    continuation_nats,
    invented_share,
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

# name -> sampling parameters
STRATEGIES = {
    "greedy": {"temperature": 0.0},
    "T=0.5": {"temperature": 0.5},
    "T=0.8": {"temperature": 0.8},
    "T=1.0": {"temperature": 1.0},
    "T=1.3": {"temperature": 1.3},
    "T=1.0, top-k 10": {"temperature": 1.0, "top_k": 10},
    "T=1.0, top-k 50": {"temperature": 1.0, "top_k": 50},
    "T=1.0, top-p 0.8": {"temperature": 1.0, "top_p": 0.8},
    "T=1.0, top-p 0.95": {"temperature": 1.0, "top_p": 0.95},
    "T=0.8, top-p 0.95": {"temperature": 0.8, "top_p": 0.95},
    "T=1.3, top-p 0.8": {"temperature": 1.3, "top_p": 0.8},
}
TEMPERATURE_LADDER = ["greedy", "T=0.5", "T=0.8", "T=1.0", "T=1.3"]
SHOWN = ["greedy", "T=0.8", "T=1.0, top-p 0.8", "T=1.3"]  # the strategies whose text the docs show


def main(exp: Experiment) -> None:
    n_prompts = exp.pick(full=64, quick=32, smoke=2)
    per_prompt = exp.pick(full=8, quick=4, smoke=2)
    prompt_len = exp.pick(full=16, quick=16, smoke=8)
    new_tokens = exp.pick(full=96, quick=64, smoke=16)
    model, tok, base = target(exp)
    pairs = story_prompts(tok, n_prompts, prompt_len, new_tokens)
    prompts = [p for p, _ in pairs for _ in range(per_prompt)]  # each prompt per_prompt times, side by side
    exp.set_config(model=base, strategies=STRATEGIES, prompts=n_prompts, samples_per_prompt=per_prompt,
                   prompt_tokens=prompt_len, new_tokens=new_tokens, stop="<|endoftext|>",
                   prompt_source="tinystories-valid-1k (held out)")

    stats, shown, show = {}, {}, clean_cut(tok, pairs)
    for i, (name, params) in enumerate(STRATEGIES.items()):
        outs = []
        for start in range(0, len(prompts), 128):  # 128 rows per batch keeps the KV cache small
            outs += generate(model, prompts[start:start + 128], new_tokens, stop_tokens=stop_ids(tok),
                             seed=exp.seed * 1000 + i * 100 + start, **params)
        stats[name] = text_stats(tok, model, prompts, outs, per_prompt)
        shown[name] = outs[show * per_prompt]
        exp.log(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in stats[name].items()))
    human_ws = [words(tok.decode(c)) for _, c in pairs]
    nats, count = continuation_nats(model, pairs)
    human = {"nll": nats / count, "repeated4": repeated_share(human_ws), "invented": invented_share(human_ws)}
    exp.log(f"human: {human}")

    exp.metric("strategies", stats)
    exp.metric("human", human)
    exp.metric("samples", sample_texts(tok, pairs[show][0], {n: shown[n] for n in SHOWN} |
                                       {"the human continuation": pairs[show][1]}))
    rows = [[name, s["distinct2"], s["repeated4"], s["looping"], s["nll"], s["invented"], s["tokens"]]
            for name, s in stats.items()]
    rows.append(["human text (the story's own continuation)", None, human["repeated4"], None, human["nll"],
                 human["invented"], new_tokens])
    exp.table("strategies", ["strategy", "distinct-2 across samples", "repeated 4-grams", "samples in a loop",
                             "NLL under the model (nats/token)", "invented words", "tokens per sample"], rows,
              caption=f"{n_prompts} held-out story openings of {prompt_len} tokens, {per_prompt} samples of up to "
                      f"{new_tokens} tokens each per strategy (a sample ends early at <|endoftext|>). distinct-2: "
                      "distinct word pairs / all word pairs among one prompt's samples, averaged over prompts; "
                      "invented words: share of words absent from the model's training text.")

    # ---- findings ----
    g = stats["greedy"]
    sampled = {k: v for k, v in stats.items() if k != "greedy"}
    exp.finding("Greedy text is the most probable under the model: its NLL is the lowest of all strategies",
                all(g["nll"] < s["nll"] for s in sampled.values()), greedy=g["nll"],
                next_lowest=min(s["nll"] for s in sampled.values()))
    exp.finding("Greedy text repeats itself the most: its share of repeated 4-grams is the highest of all strategies",
                all(g["repeated4"] > s["repeated4"] for s in sampled.values()), greedy=g["repeated4"],
                next_highest=max(s["repeated4"] for s in sampled.values()))
    exp.finding("Greedy text repeats 4-grams more than twice as often as human text", g["repeated4"] >
                2 * human["repeated4"], greedy=g["repeated4"], human=human["repeated4"])
    ladder = [stats[k]["distinct2"] for k in TEMPERATURE_LADDER]
    exp.finding("Diversity across samples rises at every step of temperature (greedy, 0.5, 0.8, 1.0, 1.3)",
                all(a < b for a, b in pairwise(ladder)),
                **{k: stats[k]["distinct2"] for k in TEMPERATURE_LADDER})
    nll = [stats[k]["nll"] for k in TEMPERATURE_LADDER]
    exp.finding("The NLL under the model rises at every step of temperature (greedy, 0.5, 0.8, 1.0, 1.3)",
                all(a < b for a, b in pairwise(nll)), **{k: stats[k]["nll"] for k in TEMPERATURE_LADDER})
    exp.finding("Pure sampling at T=1 gives text the model itself finds less probable than human text (higher NLL)",
                stats["T=1.0"]["nll"] > human["nll"], sampled=stats["T=1.0"]["nll"], human=human["nll"])
    exp.finding("At T=1.3 the model invents words at least 3x as often as human text does",
                stats["T=1.3"]["invented"] >= 3 * human["invented"], t13=stats["T=1.3"]["invented"],
                human=human["invented"])
    p, t1 = stats["T=1.0, top-p 0.8"], stats["T=1.0"]
    exp.finding("top-p 0.8 at T=1 invents fewer words than pure sampling at T=1", p["invented"] < t1["invented"],
                top_p=p["invented"], pure=t1["invented"])
    exp.finding("top-p 0.8 at T=1 keeps at least 80% of pure sampling's diversity across samples",
                p["distinct2"] >= 0.8 * t1["distinct2"], top_p=p["distinct2"], pure=t1["distinct2"])
    hot, hot_p = stats["T=1.3"], stats["T=1.3, top-p 0.8"]
    exp.finding("top-p 0.8 at least halves the invented words of T=1.3", hot_p["invented"] <= 0.5 * hot["invented"],
                t13_top_p=hot_p["invented"], t13=hot["invented"])
    exp.finding("Truncation rescues a high temperature: T=1.3 with top-p 0.8 invents fewer words than T=1.0 without "
                "a filter", hot_p["invented"] < t1["invented"], t13_top_p=hot_p["invented"], t10=t1["invented"],
                t13=hot["invented"])

    # ---- plot ----
    fig, axes = figure(2)
    ax = axes[0][0]
    for i, (name, s) in enumerate(stats.items()):
        ax.scatter(s["distinct2"], s["nll"], color=f"C{i % 10}", marker="os"[i // 10], s=45, zorder=3, label=name)
    ax.axhline(human["nll"], color="k", ls="--", lw=1, label="human text")
    ax.set(xlabel="diversity: distinct-2 across a prompt's samples", ylabel="NLL under the model (nats/token)",
           title="diversity against the model's likelihood")
    ax.legend(fontsize=7, ncol=2)
    ax = axes[0][1]
    for i, (name, s) in enumerate(stats.items()):
        ax.scatter(s["repeated4"], s["invented"], color=f"C{i % 10}", marker="os"[i // 10], s=45, zorder=3)
        ax.annotate(name, (s["repeated4"], s["invented"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.scatter(human["repeated4"], human["invented"], color="k", marker="*", s=120, zorder=4)
    ax.annotate("human", (human["repeated4"], human["invented"]), fontsize=8, xytext=(4, -8),
                textcoords="offset points")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set(xlabel="repeated 4-grams (symlog)", ylabel="invented words (symlog)",
           title="two ways to fail: loops and gibberish")
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
