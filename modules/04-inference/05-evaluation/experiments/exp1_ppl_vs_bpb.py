"""Which language model is better: the one with the lower perplexity? Not when their tokenizers differ — bits
per byte compares them, perplexity does not.

Part 1: the same small model (4 layers x 128) trained on TinyStories with three tokenizers — characters, and
byte-level BPEs of 1,024 and 4,096 tokens — for the same steps on batches of the same number of tokens, then
measured on every token of the same held-out stories (``mmlab.train.evaluate.split_loss``, what ``mmlab eval
--task perplexity`` runs). Perplexity ``exp(nats / token)`` is the number of equally likely tokens the model
is choosing between, so it grows with what a token holds; bits per byte ``nats * tokens / (bytes * ln 2)``
divides the same summed loss by the text's UTF-8 bytes, which every tokenizer agrees on. Beside each model:
what a uniform guess over its vocabulary would score.

Part 2: one model (the post-training lessons' pretrained base, ``mmlab.lab.posttrain.lesson_base``) on three
texts through ``mmlab.eval.perplexity.perplexity`` — held-out TinyStories (its domain), a 1908 short story
(``the-verdict``) and Shakespeare: its tokenizer packs fewer bytes into a token out of domain, so even for one
model, per-token numbers shift with the text's tokenization.
"""

import math

from _common import cli_samples

from mmlab.eval.perplexity import perplexity
from mmlab.lab import Experiment
from mmlab.lab.lm import document_splits, train_on_text
from mmlab.lab.plots import figure
from mmlab.lab.posttrain import base_settings, lesson_base
from mmlab.tokenizer.base import ENDOFTEXT
from mmlab.tokenizer.bpe import train_bpe
from mmlab.tokenizer.char import CharTokenizer
from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model

CORPORA = {"tinystories-valid-1k": "TinyStories (held out)", "the-verdict": "The Verdict (1908)",
           "tinyshakespeare": "Shakespeare"}


def ranks(values: dict[str, float]) -> dict[str, int]:
    order = sorted(values, key=values.get)
    return {k: order.index(k) + 1 for k in values}


def main(exp: Experiment) -> None:
    steps = exp.pick(full=300, quick=20, smoke=2)
    block, batch, lr = 128, 16, 2e-3
    train_docs, val_docs = document_splits("tinystories-train-2mib", max_chars=exp.pick(None, 300_000, 60_000))
    if exp.mode != "full":
        val_docs = val_docs[: exp.pick(None, 20, 8)]
    sizes = exp.pick(full=(1024, 4096), quick=(1024, 4096), smoke=(300, 400))
    tokenizers = {"char": CharTokenizer.from_corpus("".join(train_docs + val_docs), special_tokens=[ENDOFTEXT]),
                  **{f"BPE {s:,}": train_bpe(train_docs, vocab_size=s) for s in sizes}}
    limit = exp.pick(full=16_384, quick=2048, smoke=128)
    exp.set_config(part1={"corpus": "tinystories-train-2mib", "train_stories": len(train_docs),
                          "val_stories": len(val_docs), "steps": steps, "batch_rows": batch, "block_tokens": block,
                          "lr": lr, "model": "4 layers x 128, 4 heads, tied embeddings",
                          "tokenizers": {k: t.vocab_size for k, t in tokenizers.items()}, "seed": exp.seed},
                   part2={"model": base_settings(exp), "corpora": list(CORPORA), "tokens_per_corpus": limit})

    # ---- part 1: three tokenizers, one text ----
    runs = {}
    for name, tok in tokenizers.items():
        r, m = train_on_text(tok, train_docs, val_docs, steps, lr, seed=exp.seed, block_size=block,
                             batch_size=batch, eval_batches=exp.pick(5, 2, 1))
        v = tok.vocab_size
        runs[name] = {"vocab": v, "tokens": m.tokens, "bytes": m.bytes, "nats": m.nats,
                      "bytes_per_token": m.bytes_per_token, "loss": m.loss, "perplexity": math.exp(m.loss),
                      "bits_per_byte": m.bits_per_byte,
                      "bpb_by_hand": m.loss * m.tokens / (m.bytes * math.log(2)),
                      "uniform_perplexity": float(v), "uniform_bits_per_byte": math.log2(v) / m.bytes_per_token,
                      "train_s": r["elapsed_s"]}
        exp.log(f"{name}: {m.bytes_per_token:.2f} bytes/token, {m.loss:.3f} nats/token, perplexity "
                f"{math.exp(m.loss):.2f}, {m.bits_per_byte:.3f} bits/byte")
    ppl_rank = ranks({k: r["perplexity"] for k, r in runs.items()})
    bpb_rank = ranks({k: r["bits_per_byte"] for k, r in runs.items()})
    exp.metric("tokenizers", runs)
    exp.metric("rank_by_perplexity", ppl_rank)
    exp.metric("rank_by_bits_per_byte", bpb_rank)
    exp.table("tokenizers", ["tokenizer", "vocab", "bytes / token", "nats / token", "perplexity", "bits / byte",
                             "rank by perplexity", "rank by bits / byte", "uniform guess: perplexity",
                             "uniform guess: bits / byte"],
              [[k, r["vocab"], r["bytes_per_token"], r["loss"], r["perplexity"], r["bits_per_byte"], ppl_rank[k],
                bpb_rank[k], r["uniform_perplexity"], r["uniform_bits_per_byte"]] for k, r in runs.items()],
              caption=f"{steps} steps of {batch} x {block} tokens each (the same compute per step; a longer token "
                      f"carries more text), one seed; every token of {len(val_docs)} held-out stories. bits / byte = "
                      "nats / token x tokens / (bytes x ln 2); uniform guess: 1 / vocab for every token.")

    # ---- part 2: one model, three texts ----
    base = lesson_base(exp)
    model, tok = load_model(base).eval(), load_checkpoint_tokenizer(base)
    texts = {}
    for corpus in CORPORA:
        report = perplexity(model, tok, corpus, limit=limit)
        m = report["metrics"]
        if corpus == "tinystories-valid-1k":
            exp.metric("cli_perplexity", cli_samples("perplexity", f"--data {corpus} --limit {limit}", report, {
                k: report[k] for k in ("task", "n", "data", "split", "metrics", "chance") if k in report}))
        texts[corpus] = m | {"per_byte_perplexity": 2 ** m["bits_per_byte"]}
        exp.log(f"base on {corpus}: {m['bytes_per_token']:.2f} bytes/token, perplexity {m['perplexity']:.2f}, "
                f"{m['bits_per_byte']:.3f} bits/byte")
    exp.metric("base_on_texts", texts)
    exp.table("texts", ["text", "tokens scored", "bytes / token", "nats / token", "perplexity", "bits / byte",
                        "perplexity per byte (2^bpb)"],
              [[CORPORA[c], m["tokens"], m["bytes_per_token"], m["loss"], m["perplexity"], m["bits_per_byte"],
                m["per_byte_perplexity"]] for c, m in texts.items()],
              caption=f"the lessons' pretrained base (4 x 128, 1,024-token BPE trained on TinyStories) on the first "
                      f"{limit:,} tokens of each text; TinyStories validation stories were never trained on.")

    # ---- findings ----
    names = list(runs)
    exp.finding("Perplexity ranks the character model best (it predicts the smallest units)",
                ppl_rank["char"] == 1, **{k: r["perplexity"] for k, r in runs.items()})
    exp.finding("Bits per byte ranks the three models differently from perplexity", ppl_rank != bpb_rank,
                **{k: r["bits_per_byte"] for k, r in runs.items()})
    exp.finding("Perplexity grows with bytes per token: a longer token is a harder guess",
                sorted(names, key=lambda k: runs[k]["bytes_per_token"]) == sorted(names,
                                                                                  key=lambda k: runs[k]["perplexity"]),
                **{k: r["bytes_per_token"] for k, r in runs.items()})
    exp.finding("Even a uniform guess scores fewer bits per byte with a bigger vocabulary (the vocabulary "
                "already knows the language's frequent strings)",
                runs[names[-1]]["uniform_bits_per_byte"] < runs["char"]["uniform_bits_per_byte"],
                **{k: r["uniform_bits_per_byte"] for k, r in runs.items()})
    exp.finding("bits per byte = nats per token x tokens / (bytes x ln 2), for every model",
                all(abs(r["bpb_by_hand"] - r["bits_per_byte"]) < 1e-9 for r in runs.values()),
                **{k: r["bpb_by_hand"] for k, r in runs.items()})
    ts = texts["tinystories-valid-1k"]
    exp.finding("Out of its domain the base's tokenizer packs fewer bytes into a token than on TinyStories",
                all(texts[c]["bytes_per_token"] < ts["bytes_per_token"] for c in list(CORPORA)[1:]),
                **{c: texts[c]["bytes_per_token"] for c in CORPORA})
    exp.finding("The base scores its best bits per byte on held-out TinyStories, its own domain",
                min(texts, key=lambda c: texts[c]["bits_per_byte"]) == "tinystories-valid-1k",
                **{c: texts[c]["bits_per_byte"] for c in CORPORA})
    exp.finding("Ranking the three texts by the base's perplexity gives the same order as by bits per byte",
                ranks({c: m["perplexity"] for c, m in texts.items()}) == ranks({c: m["bits_per_byte"]
                                                                              for c, m in texts.items()}),
                **{c: texts[c]["perplexity"] for c in CORPORA})

    # ---- figure ----
    fig, axes = figure(3, width=4.6)
    colors = {k: f"C{i}" for i, k in enumerate(names)}
    ax = axes[0][0]
    ax.bar(names, [runs[k]["perplexity"] for k in names], color=[colors[k] for k in names])
    ax.set(ylabel="perplexity (per token)", title="perplexity: per token")
    ax = axes[0][1]
    ax.bar(names, [runs[k]["bits_per_byte"] for k in names], color=[colors[k] for k in names])
    ax.set(ylabel="bits per byte (lower is better)", title="bits per byte: the same text")
    ax = axes[0][2]
    xs = range(len(CORPORA))
    ax.bar([x - 0.2 for x in xs], [texts[c]["bits_per_byte"] for c in CORPORA], 0.4, label="bits / byte")
    ax.bar([x + 0.2 for x in xs], [texts[c]["bytes_per_token"] for c in CORPORA], 0.4, label="bytes / token")
    ax.set_xticks(list(xs), [CORPORA[c].replace(" (", "\n(") for c in CORPORA], fontsize=8)
    ax.set(title="the base model on three texts")
    ax.legend(fontsize=8)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
