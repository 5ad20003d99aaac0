"""Does our plain-Python BPE learn what the Hugging Face `tokenizers` trainer learns, and how much slower is it?

Both are byte-level BPE: start from the 256 bytes, split the text into word-like chunks, then repeatedly
merge the most frequent adjacent pair. We train both on the first 90% of TinyShakespeare at the same
vocabulary sizes and compare, on the last 10% (text neither has seen): bytes per token (compression),
the learned tokens themselves (as byte strings), the order of the first merges, training time and
encoding speed, and that decode(encode(text)) gives the text back.
"""

import statistics
import time

from tokenizers import pre_tokenizers

from mmlab.data.corpus import load_corpus
from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.tokenizer.base import SPECIAL_TOKENS
from mmlab.tokenizer.bpe import train_bpe
from mmlab.tokenizer.teaching_bpe import TeachingBPE


def hf_learned_tokens(tok) -> list[bytes]:
    """HF's merges as byte strings, in the order learned (its byte-level alphabet mapped back to bytes)."""
    import json

    to_byte = {ch: b for b, ch in enumerate(_bytes_to_unicode())}
    merges = json.loads(tok.hf.to_str())["model"]["merges"]
    out = []
    for m in merges:
        left, right = m if isinstance(m, list) else m.split(" ")
        out.append(bytes(to_byte[c] for c in left + right))
    return out


def _bytes_to_unicode() -> list[str]:
    """GPT-2's printable stand-in for each byte (what byte-level BPE vocabularies store), indexed by byte."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    assert set(table.values()) == set(alphabet)
    return [table[b] for b in range(256)]


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


def main(exp: Experiment) -> None:
    sizes = exp.pick(full=[512, 1024], quick=[300, 400], smoke=[270])
    chars = exp.pick(full=None, quick=120_000, smoke=20_000)
    text = load_corpus("tinyshakespeare").documents[0][:chars]
    cut = int(len(text) * 0.9)
    train, held_out = text[:cut], text[cut:]
    n_bytes = len(held_out.encode("utf-8"))
    exp.set_config(vocab_sizes=sizes, train_chars=len(train), held_out_bytes=n_bytes,
                   special_tokens=list(SPECIAL_TOKENS), hf_min_frequency=2)

    runs, rows = {}, []
    for size in sizes:
        teach, t_teach = timed(lambda s=size: TeachingBPE.train(train, s), 1)
        hf, t_hf = timed(lambda s=size: train_bpe([train], s), exp.pick(3, 3, 1))
        r = {}
        for name, tok in (("teaching", teach), ("hf", hf)):
            ids, t_enc = timed(lambda t=tok: t.encode(held_out, allow_special=False), exp.pick(3, 1, 1))
            r[name] = {"vocab_size": tok.vocab_size, "bytes_per_token": n_bytes / len(ids),
                       "encode_mb_per_s": n_bytes / t_enc / 1e6, "round_trip": tok.decode(ids) == held_out}
        r["teaching"]["train_s"], r["hf"]["train_s"] = t_teach, t_hf
        learned_t = [teach.vocab[256 + i] for i in range(len(teach.merges))]
        learned_h = hf_learned_tokens(hf)
        same_prefix = next((i for i, (a, b) in enumerate(zip(learned_t, learned_h, strict=False)) if a != b),
                           min(len(learned_t), len(learned_h)))
        r["learned"] = {"teaching": len(learned_t), "hf": len(learned_h),
                        "shared": len(set(learned_t) & set(learned_h)),
                        "jaccard": len(set(learned_t) & set(learned_h)) / len(set(learned_t) | set(learned_h)),
                        "same_first_merges": same_prefix,
                        "first_10_teaching": [b.decode("utf-8", "replace") for b in learned_t[:10]],
                        "first_10_hf": [b.decode("utf-8", "replace") for b in learned_h[:10]]}
        runs[size] = r
        exp.log(f"vocab {size}: bytes/token teaching {r['teaching']['bytes_per_token']:.3f} hf "
                f"{r['hf']['bytes_per_token']:.3f}; train {t_teach:.2f} s vs {t_hf:.3f} s; shared tokens "
                f"{r['learned']['shared']}/{r['learned']['teaching']}")
        for name, label in (("teaching", "teaching BPE (Python)"), ("hf", "HF tokenizers (Rust)")):
            rows.append([size, label, r[name]["bytes_per_token"], r[name]["train_s"], r[name]["encode_mb_per_s"],
                         r[name]["round_trip"]])
    exp.metric("runs", runs)
    exp.table("side_by_side", ["vocab", "trainer", "bytes / token (held out)", "train s", "encode MB/s", "round trip"],
              rows, caption=f"Trained on {len(train):,} characters of TinyShakespeare, measured on the next "
                            f"{n_bytes:,} bytes. Train time: one run for the Python trainer, the median of "
                            f"{exp.pick(3, 3, 1)} for HF.")
    exp.table("merges", ["vocab", "learned tokens", "shared", "Jaccard", "identical first merges",
                         "first 10 (teaching)", "first 10 (HF)"],
              [[s, L["teaching"], L["shared"], L["jaccard"], L["same_first_merges"],
                " ".join(repr(t) for t in L["first_10_teaching"]), " ".join(repr(t) for t in L["first_10_hf"])]
               for s, L in ((s, runs[s]["learned"]) for s in sizes)])

    big = sizes[-1]
    t, h = runs[big]["teaching"], runs[big]["hf"]
    exp.finding("Both trainers compress held-out text equally well (bytes per token within 3%)",
                abs(t["bytes_per_token"] / h["bytes_per_token"] - 1) < 0.03,
                vocab=big, teaching=t["bytes_per_token"], hf=h["bytes_per_token"])
    exp.finding("Most learned tokens are the same (Jaccard >= 0.8)", runs[big]["learned"]["jaccard"] >= 0.8,
                vocab=big, jaccard=runs[big]["learned"]["jaccard"], shared=runs[big]["learned"]["shared"])
    exp.finding("The Rust trainer is more than 10x faster than the Python loop", t["train_s"] > 10 * h["train_s"],
                vocab=big, teaching_s=t["train_s"], hf_s=h["train_s"], ratio=t["train_s"] / h["train_s"])
    exp.finding("Both give the held-out text back exactly (decode(encode(text)) == text)",
                all(runs[s][k]["round_trip"] for s in sizes for k in ("teaching", "hf")))
    exp.finding("A larger vocabulary compresses more (bytes per token rises with vocab size, both trainers)",
                len(sizes) < 2 or all(runs[sizes[-1]][k]["bytes_per_token"] > runs[sizes[0]][k]["bytes_per_token"]
                                      for k in ("teaching", "hf")),
                **{f"hf_{s}": runs[s]["hf"]["bytes_per_token"] for s in sizes})

    fig, axes = figure(2)
    ax = axes[0][0]
    for k, label in (("teaching", "teaching BPE (Python)"), ("hf", "HF tokenizers (Rust)")):
        ax.plot(sizes, [runs[s][k]["bytes_per_token"] for s in sizes], "o-", label=label)
    ax.set(xlabel="vocabulary size (tokens)", ylabel="bytes per token on held-out text", title="compression")
    ax.legend()
    ax = axes[0][1]
    for k, label in (("teaching", "teaching BPE (Python)"), ("hf", "HF tokenizers (Rust)")):
        ax.plot(sizes, [runs[s][k]["train_s"] for s in sizes], "o-", label=label)
    ax.set_yscale("log")
    ax.set(xlabel="vocabulary size (tokens)", ylabel="training time (s, log scale)", title="training speed")
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
