"""How big should the vocabulary be? BPE at 259 (bytes only), 1k, 6400 and 16k tokens: compression
against the bits per byte a small model reaches.

A run is labelled by the vocabulary its tokenizer really has, not the one asked for: on 2 MiB the BPE
trainer runs out of pairs that occur often enough to merge before it reaches 16,384 tokens, and the
table says what it reached.

TinyStories (2 MiB): a byte-level BPE of each size is trained on the first 90% of the stories, the same
small model (4 layers x 128; only its embedding and output layer grow with the vocabulary) trains for
the same number of steps on batches of the same number of *tokens*, and is measured on every token of
the held-out 10%. Loss per token does not compare across tokenizers (a token is a byte for one and a
word for another), so we compare bits per byte: summed loss / ln 2 / bytes of held-out text.
A bigger vocabulary sees more text per step and per context window, but each token is rarer.
"""

import itertools

from mmlab.lab import Experiment
from mmlab.lab.lm import document_splits, train_on_text
from mmlab.lab.plots import figure
from mmlab.tokenizer.bpe import train_bpe


def main(exp: Experiment) -> None:
    sizes = exp.pick(full=[259, 1024, 6400, 16384], quick=[259, 1024, 6400], smoke=[259, 300])
    steps = exp.pick(full=450, quick=40, smoke=2)
    block, batch = 128, 16
    train_docs, val_docs = document_splits("tinystories-train-2mib", max_chars=exp.pick(None, 400_000, 60_000))
    if exp.mode != "full":
        val_docs = val_docs[: exp.pick(None, 40, 10)]
    exp.set_config(vocab_sizes=sizes, steps=steps, block_tokens=block, batch_rows=batch, lr=2e-3,
                   model="4 layers x 128, 4 heads, tied embeddings", train_stories=len(train_docs),
                   val_stories=len(val_docs))
    runs = {}
    for requested in sizes:
        tok = train_bpe(train_docs, vocab_size=requested)
        size = tok.vocab_size  # the label: what the trainer reached, which can be less than what was asked
        if size in runs:  # two requests that reached the same vocabulary are one run
            exp.log(f"vocab {requested}: the trainer reached {size} again; not trained twice")
            continue
        r, m = train_on_text(tok, train_docs, val_docs, steps, 2e-3, seed=exp.seed, block_size=block,
                             batch_size=batch, eval_batches=exp.pick(20, 4, 2))
        model = r.pop("model")
        runs[size] = {"vocab_size": tok.vocab_size, "requested_vocab_size": requested,
                      "bytes_per_token": m.bytes_per_token, "val_loss": m.loss,
                      "bits_per_byte": m.bits_per_byte, "tokens_per_s": r["tokens_per_s"],
                      "train_s": r["elapsed_s"], "params": sum(p.numel() for p in model.parameters()),
                      "embedding_params": model.tok_emb.weight.numel(), "train_tokens": r["train_tokens"],
                      "bytes_seen": steps * batch * block * m.bytes_per_token}
        exp.log(f"vocab {size} (asked for {requested}): {m.bytes_per_token:.2f} bytes/token, "
                f"val {m.loss:.3f} nats/token = {m.bits_per_byte:.3f} bits/byte, {r['tokens_per_s']:.0f} tokens/s")
    exp.metric("runs", runs)
    exp.table("sweep", ["vocab (asked for)", "bytes / token", "params (embedding)", "text seen (MB)", "tokens / s",
                        "val nats / token", "val bits / byte"],
              [[f"{s:,} ({r['requested_vocab_size']:,})", r["bytes_per_token"],
                f"{r['params']:,} ({r['embedding_params']:,})", r["bytes_seen"] / 1e6, r["tokens_per_s"],
                r["val_loss"], r["bits_per_byte"]] for s, r in runs.items()],
              caption=f"{steps} steps of {batch} x {block} tokens, lr 2e-3 cosine, one seed; measured on every "
                      "token of the held-out stories.")
    sizes = list(runs)  # the vocabularies reached, in the order asked
    bpb = {s: r["bits_per_byte"] for s, r in runs.items()}
    best = min(bpb, key=bpb.get)
    exp.metric("best_vocab", best)
    first, last = sizes[0], sizes[-1]
    exp.finding("Bytes per token grows with the vocabulary", all(
        runs[a]["bytes_per_token"] < runs[b]["bytes_per_token"] for a, b in itertools.pairwise(sizes)),
        **{f"v{s}": runs[s]["bytes_per_token"] for s in sizes})
    exp.finding("At equal steps and tokens per batch, every BPE beats raw bytes in bits per byte",
                all(bpb[s] < bpb[first] for s in sizes[1:]), **{f"v{s}": bpb[s] for s in sizes})
    exp.finding("The largest vocabulary is not the best one at this data and step budget",
                best != last, best=best, largest=last)
    exp.finding("A larger output layer costs speed: the largest vocabulary trains fewer tokens/s than bytes-only",
                runs[last]["tokens_per_s"] < runs[first]["tokens_per_s"],
                bytes_only=runs[first]["tokens_per_s"], largest=runs[last]["tokens_per_s"])

    fig, axes = figure(2)
    ax = axes[0][0]
    ax.plot(sizes, [runs[s]["bytes_per_token"] for s in sizes], "o-")
    ax.set_xscale("log")
    ax.set(xlabel="vocabulary size (tokens, log scale)", ylabel="bytes per token (held out)", title="compression")
    ax = axes[0][1]
    ax.plot(sizes, [bpb[s] for s in sizes], "o-", color="C1")
    ax.set_xscale("log")
    ax.set(xlabel="vocabulary size (tokens, log scale)", ylabel="val bits per byte (lower is better)",
           title=f"small model, {steps} steps")
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
