"""What do int8 and int4 weights buy and cost: how many bytes, how fast a CPU decodes, how much worse the model
predicts held-out text?

One model trained for this lesson (4 layers x 256 on TinyShakespeare characters, see ``_common.py``) in
eight formats: fp32, bf16 (every weight cast), and the library's weight-only quantization
(``mmlab.infer.quant.quantize_model``, symmetric round-to-nearest) — int8 with one scale per output
channel and with groups of 64 inputs, int4 with groups of 32, 64 and 128 and per channel. The embedding
(tied to the LM head) stays in fp32. For each: the model's bytes (``model_nbytes``), greedy decode speed
through ``mmlab.infer.generate.generate`` (static KV cache; the variants interleaved, repeat after
repeat; median), and the mean loss on held-out characters (the same tokens for every variant).
"""

import statistics
import time
from itertools import pairwise

import torch
from _common import VARIANTS, trained_model, val_loss, val_tokens, variant

from mmlab.infer.generate import generate
from mmlab.infer.quant import model_nbytes
from mmlab.lab import Experiment
from mmlab.lab.plots import figure

PROMPT_LEN = 16


def decode_seconds(model, prompt: list[int], new_tokens: int) -> float:
    t = time.perf_counter()
    out = generate(model, prompt, new_tokens, temperature=0.0)
    elapsed = time.perf_counter() - t
    assert len(out[0]) == new_tokens
    return elapsed


def main(exp: Experiment) -> None:
    n_eval = exp.pick(full=32_768, quick=4096, smoke=256)
    new_tokens = exp.pick(full=96, quick=48, smoke=4)
    repeats = exp.pick(full=7, quick=3, smoke=1)
    base, train_settings = trained_model(exp)
    tokens = val_tokens(n_eval)
    prompt = tokens[:PROMPT_LEN].tolist()
    exp.set_config(train=train_settings,
                   variants={k: {kk: str(vv) for kk, vv in v.items()} for k, v in VARIANTS.items()},
                   eval_tokens=n_eval, new_tokens=new_tokens, prompt_tokens=PROMPT_LEN, repeats=repeats,
                   kept_in_fp32="tok_emb (= lm_head, tied), norms", threads=torch.get_num_threads())

    models = {name: variant(base, name) for name in VARIANTS}
    nbytes = {name: model_nbytes(m) for name, m in models.items()}
    loss = {}
    for name, m in models.items():
        loss[name] = val_loss(m, tokens)
        exp.log(f"{name}: {nbytes[name] / 2**20:.2f} MiB, val loss {loss[name]:.4f}")
    for m in models.values():
        decode_seconds(m, prompt, 2)  # warm-up
    times = {name: [] for name in models}
    for _ in range(repeats):
        for name, m in models.items():
            times[name].append(decode_seconds(m, prompt, new_tokens))
    tps = {name: new_tokens / statistics.median(t) for name, t in times.items()}
    delta = {name: loss[name] - loss["fp32"] for name in models}

    exp.metric("model_bytes", nbytes)
    exp.metric("val_loss", loss)
    exp.metric("val_loss_change", delta)
    exp.metric("decode_tokens_per_s", tps)
    exp.table("variants", ["format", "model MiB", "size vs fp32", "decode tokens/s", "speed vs fp32", "val loss",
                           "change vs fp32 (nats)"],
              [[name, nbytes[name] / 2**20, nbytes[name] / nbytes["fp32"], tps[name], tps[name] / tps["fp32"],
                loss[name], delta[name]] for name in models],
              caption=f"val loss on the first {n_eval:,} held-out characters; decode: {new_tokens} greedy tokens "
                      f"after a {PROMPT_LEN}-token prompt, median of {repeats} interleaved runs, CPU with "
                      f"{torch.get_num_threads()} thread(s). Sizes include the fp32 embedding and scales.")

    exp.finding("int8 per-channel changes the val loss by less than 0.01 nats", abs(delta["int8 per-channel"]) < 0.01,
                change=delta["int8 per-channel"])
    exp.finding("bf16 changes the val loss by less than 0.01 nats", abs(delta["bf16"]) < 0.01, change=delta["bf16"])
    exp.finding("int4 per-channel loses more than int4 g32", delta["int4 per-channel"] > delta["int4 g32"],
                per_channel=delta["int4 per-channel"], g32=delta["int4 g32"])
    order = [delta[k] for k in ("int4 g32", "int4 g64", "int4 g128", "int4 per-channel")]
    exp.finding("For int4, the loss grows as groups get larger (g32 <= g64 <= g128 <= per-channel)",
                all(a <= b for a, b in pairwise(order)), g32=order[0], g64=order[1], g128=order[2],
                per_channel=order[3])
    exp.finding("int4 loses at least 5x more than int8 (per-channel)",
                delta["int4 per-channel"] > 5 * max(delta["int8 per-channel"], 1e-6),
                int4=delta["int4 per-channel"], int8=delta["int8 per-channel"])
    exp.finding("int4 g32 is at least 3x smaller than fp32 (embedding and scales included)",
                nbytes["fp32"] / nbytes["int4 g32"] >= 3, ratio=nbytes["fp32"] / nbytes["int4 g32"])
    exp.finding("int4 g32 is slower than fp32 on this CPU (no fused dequantizing kernel)",
                tps["int4 g32"] < tps["fp32"],
                int4_g32=tps["int4 g32"], fp32=tps["fp32"])
    exp.finding("int8 per-channel is slower than fp32 on this CPU", tps["int8 per-channel"] < tps["fp32"],
                int8=tps["int8 per-channel"], fp32=tps["fp32"])

    fig, axes = figure(2)
    names = list(models)
    ax = axes[0][0]
    for i, name in enumerate(names):
        ax.scatter(nbytes[name] / 2**20, delta[name], color=f"C{i}", s=40, label=name, zorder=3)
    ax.set_xscale("log", base=2)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set(xlabel="model size (MiB, log)", ylabel="val loss change vs fp32 (nats, symlog)",
           title="size against quality")
    ax.legend(fontsize=7)
    ax = axes[0][1]
    ax.barh(range(len(names)), [tps[n] for n in names], color=[f"C{i}" for i in range(len(names))])
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="greedy decode tokens / s (median)", title="decode speed on this CPU")
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
