"""Characters or BPE for TinyShakespeare? The same model on 65 characters, a 512-token BPE and a
2048-token BPE, compared in bits per byte, with samples.

TinyShakespeare is small (1 MB) and has 65 distinct characters, the classic setting for a character
model. Each tokenizer is trained on the first 90% of the text; the same 4-layer, 128-wide model trains
for the same steps on batches of the same number of tokens (so a BPE model sees more text), and is
measured on every token of the last 10%. We also compare how far back a 128-token context reaches.
"""

from mmlab.infer.generate import generate
from mmlab.lab import Experiment
from mmlab.lab.lm import document_splits, train_on_text
from mmlab.lab.plots import figure
from mmlab.tokenizer.bpe import train_bpe
from mmlab.tokenizer.char import CharTokenizer


def main(exp: Experiment) -> None:
    steps = exp.pick(full=1000, quick=60, smoke=2)
    block, batch = 128, 16
    train_docs, val_docs = document_splits("tinyshakespeare", max_chars=exp.pick(None, 300_000, 50_000))
    tokenizers = {
        "char (65)": CharTokenizer.from_corpus(train_docs[0] + val_docs[0]),
        "BPE 512": train_bpe(train_docs, vocab_size=512),
        "BPE 2048": train_bpe(train_docs, vocab_size=exp.pick(2048, 2048, 300)),
    }
    exp.set_config(steps=steps, block_tokens=block, batch_rows=batch, lr=2e-3, model="4 layers x 128, 4 heads",
                   train_chars=len(train_docs[0]), val_chars=len(val_docs[0]))
    runs, samples = {}, {}
    for name, tok in tokenizers.items():
        r, m = train_on_text(tok, train_docs, val_docs, steps, 2e-3, seed=exp.seed, block_size=block,
                             batch_size=batch, eval_batches=exp.pick(20, 4, 2))
        model = r.pop("model")
        runs[name] = {"vocab_size": tok.vocab_size, "bytes_per_token": m.bytes_per_token, "val_loss": m.loss,
                      "bits_per_byte": m.bits_per_byte, "tokens_per_s": r["tokens_per_s"],
                      "bytes_per_s": r["tokens_per_s"] * m.bytes_per_token, "context_bytes": block * m.bytes_per_token,
                      "params": sum(p.numel() for p in model.parameters())}
        prompt = tok.encode("ROMEO:", allow_special=False)
        # about the same length of text for every tokenizer, within the 128-token context
        n_new = exp.pick(120, 40, 5) if name.startswith("char") else exp.pick(50, 12, 2)
        samples[name] = tok.decode(prompt + generate(model, prompt, n_new, temperature=0.8, seed=0)[0])
        exp.log(f"{name}: {m.bytes_per_token:.2f} bytes/token, {m.bits_per_byte:.3f} bits/byte")
    exp.metric("runs", runs)
    exp.metric("samples", samples)
    exp.table("compare", ["tokenizer", "bytes / token", "context (bytes)", "params", "text / s (kB)",
                          "val bits / byte"],
              [[n, r["bytes_per_token"], r["context_bytes"], r["params"], r["bytes_per_s"] / 1e3, r["bits_per_byte"]]
               for n, r in runs.items()],
              caption=f"{steps} steps of {batch} x {block} tokens, one seed; held-out: the last 10% of the text.")
    exp.table("samples", ["tokenizer", "sample (temperature 0.8, seed 0)"],
              [[n, s.replace("\n", " / ")] for n, s in samples.items()])
    bpb = {n: r["bits_per_byte"] for n, r in runs.items()}
    exp.finding("At equal steps and tokens per batch, a 512-token BPE reaches fewer bits per byte than characters",
                bpb["BPE 512"] < bpb["char (65)"], char=bpb["char (65)"], bpe_512=bpb["BPE 512"])
    exp.finding("...and the 2048-token BPE fewer still", bpb["BPE 2048"] < bpb["BPE 512"],
                bpe_512=bpb["BPE 512"], bpe_2048=bpb["BPE 2048"])
    exp.finding("BPE processes more text per second (bytes/s) than characters on this CPU",
                runs["BPE 512"]["bytes_per_s"] > runs["char (65)"]["bytes_per_s"],
                char=runs["char (65)"]["bytes_per_s"], bpe_512=runs["BPE 512"]["bytes_per_s"])

    fig, axes = figure()
    ax = axes[0][0]
    names = list(runs)
    ax.bar(names, [bpb[n] for n in names], color=["C0", "C1", "C2"])
    for i, n in enumerate(names):
        ax.text(i, bpb[n], f"{bpb[n]:.3f}", ha="center", va="bottom")
    ax.set(xlabel="tokenizer", ylabel="val bits per byte (lower is better)",
           title=f"TinyShakespeare, same model and {steps} steps")
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
