"""How much faster does decoding get with a KV cache, and how does that change as the generated text grows?

One model (the ``shakespeare-char`` shape, 4 layers x 128, its position table stretched to 1,024 so no
run slides a window), one real prompt (16 characters of TinyShakespeare), greedy decoding through
``mmlab.infer.generate.generate`` with ``use_cache=True`` (the static cache) and ``use_cache=False``
(every step re-runs the whole sequence, as nanoGPT does). For each generated length the two are run
side by side, repeat after repeat, so a slow moment of the machine hits both; we report the median.
Speed does not depend on what the weights have learned, so the model is freshly initialised; a separate
check compares the logits of the two paths on the same text (they must agree: the cache is an
optimisation, not an approximation).
"""

import statistics
import time

import torch

from mmlab.config import get_preset
from mmlab.infer.generate import generate
from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_tokens
from mmlab.lab.plots import figure
from mmlab.model.lm import MiniMindLM

PROMPT_LEN = 16


def decode_seconds(model: MiniMindLM, prompt: list[int], new_tokens: int, use_cache: bool) -> float:
    t = time.perf_counter()
    out = generate(model, prompt, new_tokens, temperature=0.0, use_cache=use_cache)
    elapsed = time.perf_counter() - t
    assert len(out[0]) == new_tokens
    return elapsed


def logit_gap(model: MiniMindLM, ids: torch.Tensor) -> float:
    """Largest |logit| difference between one full forward pass over ``ids`` (1, T) and feeding the same
    tokens one at a time through a KV cache."""
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache()
        steps = [model(ids[:, t:t + 1], cache=cache).logits for t in range(ids.size(1))]
    return (full - torch.cat(steps, dim=1)).abs().max().item()


def main(exp: Experiment) -> None:
    lengths = exp.pick(full=[32, 64, 128, 256, 512], quick=[32, 64, 128, 256], smoke=[4, 8])
    repeats = exp.pick(full=5, quick=3, smoke=1)
    tok, tokens = shakespeare_tokens()
    cfg = get_preset("shakespeare-char", vocab_size=tok.vocab_size, max_seq_len=1024)
    torch.manual_seed(exp.seed)
    model = MiniMindLM(cfg).eval()
    prompt = [int(t) for t in tokens[:PROMPT_LEN]]
    exp.set_config(model="shakespeare-char shape (4 x 128, 4 heads), max_seq_len 1024, fresh init",
                   prompt_tokens=PROMPT_LEN, lengths=lengths, repeats=repeats, decoding="greedy",
                   cache="static (preallocated)", threads=torch.get_num_threads())

    decode_seconds(model, prompt, 4, True)  # warm-up: first calls allocate and pick kernels
    decode_seconds(model, prompt, 4, False)
    times: dict[str, dict[int, list[float]]] = {"cache": {n: [] for n in lengths},
                                               "no cache": {n: [] for n in lengths}}
    for r in range(repeats):
        for n in lengths:
            for name in ("cache", "no cache"):
                times[name][n].append(decode_seconds(model, prompt, n, name == "cache"))
        exp.log(f"repeat {r + 1}/{repeats} done")
    med = {name: {n: statistics.median(v) for n, v in d.items()} for name, d in times.items()}
    tps = {name: {n: n / s for n, s in d.items()} for name, d in med.items()}
    per_token_ms = {name: {n: 1000 * s / n for n, s in d.items()} for name, d in med.items()}
    speedup = {n: med["no cache"][n] / med["cache"][n] for n in lengths}
    gap = logit_gap(model, torch.tensor([[int(t) for t in tokens[:exp.pick(256, 128, 16)]]]))

    exp.metric("median_seconds", med)
    exp.metric("tokens_per_s", tps)
    exp.metric("ms_per_token", per_token_ms)
    exp.metric("speedup", speedup)
    exp.metric("max_logit_difference", gap)
    exp.table("speed", ["new tokens", "tokens/s with cache", "tokens/s without", "ms/token with cache",
                        "ms/token without", "speed-up"],
              [[n, tps["cache"][n], tps["no cache"][n], per_token_ms["cache"][n], per_token_ms["no cache"][n],
                speedup[n]] for n in lengths],
              caption=f"greedy decoding after a {PROMPT_LEN}-token prompt; median of {repeats} runs each, the two "
                      f"paths interleaved; CPU, {torch.get_num_threads()} thread(s). Times include the prefill.")

    first, last = lengths[0], lengths[-1]
    faster_from = next((n for i, n in enumerate(lengths) if all(speedup[m] > 1 for m in lengths[i:])), None)
    exp.finding(f"The cache is faster at every length from {faster_from if faster_from else '-'} new tokens up "
                f"(of {lengths})", faster_from is not None, first_length_from_which_faster=faster_from,
                **{f"speedup_{n}": speedup[n] for n in lengths})
    exp.finding(f"The cache is faster at every length tried ({first} to {last} tokens)", faster_from == first,
                **{f"speedup_{n}": speedup[n] for n in lengths})
    growth_nc = per_token_ms["no cache"][last] / per_token_ms["no cache"][first]
    growth_c = per_token_ms["cache"][last] / per_token_ms["cache"][first]
    exp.finding(f"Without the cache, time per token grows with length: at {last} tokens it is more than twice "
                f"that at {first}", growth_nc > 2, ratio=growth_nc, ms_first=per_token_ms["no cache"][first],
                ms_last=per_token_ms["no cache"][last])
    exp.finding(f"With the cache, time per token stays nearly flat: less than 1.5x from {first} to {last} tokens",
                growth_c < 1.5, ratio=growth_c, ms_first=per_token_ms["cache"][first],
                ms_last=per_token_ms["cache"][last])
    exp.finding("The speed-up grows with length (longest length beats shortest)", speedup[last] > speedup[first],
                speedup_first=speedup[first], speedup_last=speedup[last])
    exp.finding("Cached and uncached decoding compute the same logits (largest difference < 1e-4)", gap < 1e-4,
                max_abs_difference=gap)

    fig, axes = figure(2)
    for ax, metric, ylabel, title in ((axes[0][0], tps, "tokens / s (median)", "decode speed"),
                                      (axes[0][1], med, "seconds per run (median)", "time to generate n tokens")):
        for i, name in enumerate(("cache", "no cache")):
            ax.plot(lengths, [metric[name][n] for n in lengths], "o-", color=f"C{i}",
                    label=f"{'with' if name == 'cache' else 'without'} KV cache")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set(xlabel="new tokens generated", ylabel=ylabel, title=title)
        ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
