"""How many bytes does the KV cache hold per token — for MHA, GQA and MQA, and for the presets — and what
does preallocating it (a static cache) cost or save against growing it step by step?

Part 1 builds three models of the same width (4 layers x 256, 8 query heads of 32 dims) that differ
only in their number of KV heads: 8 (MHA), 2 (GQA) and 1 (MQA). Each prefills the same real prompt
(TinyShakespeare characters) into a growing cache; the bytes the cache then holds, divided by the
tokens it holds, are compared with the formula 2 x layers x kv_heads x head_dim x bytes per value, in
fp32 and in bf16. Part 2 does the same for the library's presets (a real prefill where the model fits
this budget, the formula for all), next to the weights' bytes and the cache of a full context. Part 3
decodes the same tokens with a static (preallocated) cache and a growing (``torch.cat``) one and
records, step by step, the time of each step and the bytes each cache holds.
"""

import statistics
import time

import torch

from mmlab.config import PRESETS, get_preset
from mmlab.lab import Experiment
from mmlab.lab.lm import shakespeare_tokens
from mmlab.lab.plots import figure
from mmlab.model.lm import MiniMindLM
from mmlab.model.summary import kv_cache_bytes_per_token, param_breakdown

VARIANTS = {"MHA": 8, "GQA": 2, "MQA": 1}  # KV heads of 8 query heads


def measured_bytes_per_token(model: MiniMindLM, ids: torch.Tensor) -> float:
    """Prefill ``ids`` (B, T) into a fresh growing cache; its bytes per cached token."""
    cache = model.new_cache(static=False)
    with torch.no_grad():
        model(ids, cache=cache)
    return cache.nbytes() / (ids.size(0) * cache.seq_len)


def decode_trace(model: MiniMindLM, prompt: torch.Tensor, steps: int, static: bool) -> tuple[list[float], list[int]]:
    """Greedy decoding with a KV cache: seconds per step and cache bytes after each step."""
    cache = model.new_cache(static=static)
    seconds, nbytes = [], []
    with torch.no_grad():
        logits = model(prompt, cache=cache).logits[:, -1]
        for _ in range(steps):
            t = time.perf_counter()
            token = logits.argmax(-1, keepdim=True)
            logits = model(token, cache=cache).logits[:, -1]
            seconds.append(time.perf_counter() - t)
            nbytes.append(cache.nbytes())
    return seconds, nbytes


def main(exp: Experiment) -> None:
    tok, tokens = shakespeare_tokens()
    prefill = exp.pick(full=128, quick=64, smoke=8)
    steps = exp.pick(full=960, quick=448, smoke=16)
    repeats = exp.pick(full=5, quick=3, smoke=1)
    width = exp.pick(full=256, quick=256, smoke=64)
    max_params = exp.pick(full=200e6, quick=30e6, smoke=1e6)  # presets measured with a real prefill
    ids = torch.tensor([[int(t) for t in tokens[:prefill]]])
    exp.set_config(width=width, layers=4, query_heads=8, kv_heads=VARIANTS, prefill_tokens=prefill,
                   decode_steps=steps, repeats=repeats, threads=torch.get_num_threads())

    # ---- part 1: MHA / GQA / MQA at a fixed width ----
    rows, per_token = [], {}
    for name, kv in VARIANTS.items():
        cfg = get_preset("shakespeare-char", vocab_size=tok.vocab_size, hidden_size=width, n_heads=8, n_kv_heads=kv,
                         max_seq_len=1024)
        torch.manual_seed(exp.seed)
        model = MiniMindLM(cfg).eval()
        fp32 = measured_bytes_per_token(model, ids)
        bf16 = measured_bytes_per_token(model.to(torch.bfloat16), ids)
        formula = {"fp32": kv_cache_bytes_per_token(cfg, 4), "bf16": kv_cache_bytes_per_token(cfg, 2)}
        per_token[name] = {"kv_heads": kv, "fp32": fp32, "bf16": bf16, "formula_fp32": formula["fp32"],
                           "formula_bf16": formula["bf16"]}
        rows.append([name, kv, cfg.head_dim, fp32, formula["fp32"], bf16, formula["bf16"]])
    exp.metric("bytes_per_token", per_token)
    exp.table("heads", ["attention", "KV heads", "head dim", "measured bytes/token (fp32)", "formula (fp32)",
                        "measured bytes/token (bf16)", "formula (bf16)"], rows,
              caption=f"4 layers x {width}, 8 query heads; measured = cache.nbytes() after a {prefill}-token "
                      "prefill into a growing cache, divided by the tokens it holds; formula = 2 x layers x "
                      "kv_heads x head_dim x bytes.")

    # ---- part 2: the presets ----
    preset_rows, presets = [], {}
    for name in PRESETS:
        cfg = get_preset(name)
        params = sum(param_breakdown(cfg).values())
        measured = None
        if params <= max_params:
            torch.manual_seed(exp.seed)
            model = MiniMindLM(cfg).to(torch.bfloat16).eval()
            n = min(prefill, cfg.max_seq_len)
            measured = measured_bytes_per_token(model, torch.randint(cfg.vocab_size, (1, n)))
            del model
        per_tok = kv_cache_bytes_per_token(cfg, 2)
        presets[name] = {"params": params, "kv_heads": cfg.kv_heads, "bf16_bytes_per_token": per_tok,
                         "measured_bf16_bytes_per_token": measured, "full_context_bytes": per_tok * cfg.max_seq_len,
                         "weights_bf16_bytes": 2 * params}
        preset_rows.append([name, f"{cfg.n_layers} x {cfg.hidden_size}", f"{cfg.n_heads} / {cfg.kv_heads}", per_tok,
                            measured, cfg.max_seq_len, per_tok * cfg.max_seq_len / 2**20,
                            per_tok * cfg.max_seq_len / (2 * params)])
    exp.metric("presets", presets)
    exp.table("presets", ["preset", "layers x width", "heads / KV heads", "bf16 bytes/token (formula)",
                          "measured", "context", "cache at full context (MiB, batch 1)",
                          "cache / bf16 weights"], preset_rows,
              caption="bf16 values; 'measured' is a real prefill of random ids (— where the model was not built "
                      "in this mode); the last column is the cache of one full-length sequence over the weights' "
                      "bytes.")

    # ---- part 3: static (preallocated) vs growing cache ----
    cfg = get_preset("shakespeare-char", vocab_size=tok.vocab_size, hidden_size=width, n_heads=8, n_kv_heads=2,
                     max_seq_len=prefill + steps)
    torch.manual_seed(exp.seed)
    model = MiniMindLM(cfg).eval()
    decode_trace(model, ids, 4, True)  # warm-up
    traces = {"static": [], "growing": []}
    nbytes = {}
    for _ in range(repeats):
        for kind in traces:
            s, b = decode_trace(model, ids, steps, kind == "static")
            traces[kind].append(s)
            nbytes[kind] = b
    step_ms = {k: [1000 * statistics.median(r[i] for r in v) for i in range(steps)] for k, v in traces.items()}
    window = max(1, steps // 8)  # medians over the first and last eighth of the steps
    early = {k: statistics.median(v[:window]) for k, v in step_ms.items()}
    late = {k: statistics.median(v[-window:]) for k, v in step_ms.items()}
    total = {k: sum(v) / 1000 for k, v in step_ms.items()}
    exp.metric("step_ms", step_ms)
    exp.metric("cache_bytes", {k: [v[0], v[-1]] for k, v in nbytes.items()})
    exp.table("static_vs_growing", ["cache", f"ms/step, first {window} steps", f"ms/step, last {window} steps",
                                    "total decode s", "bytes after step 1", f"bytes after step {steps}"],
              [[k, early[k], late[k], total[k], nbytes[k][0], nbytes[k][-1]] for k in traces],
              caption=f"4 layers x {width}, GQA 8:2, fp32; a {prefill}-token prefill then {steps} greedy steps; "
                      f"per-step medians over {repeats} interleaved runs. The static cache is allocated for "
                      f"max_seq_len = {prefill + steps} positions at the first write.")

    # ---- findings ----
    exact = all(v["fp32"] == v["formula_fp32"] and v["bf16"] == v["formula_bf16"] for v in per_token.values())
    exp.finding("The measured cache bytes per token equal 2 x layers x kv_heads x head_dim x bytes for MHA, GQA "
                "and MQA, in fp32 and bf16", exact, **{k: v["fp32"] for k, v in per_token.items()})
    exp.finding("MQA's cache is n_heads (8) times smaller than MHA's, GQA 8:2's four times",
                per_token["MHA"]["fp32"] == 8 * per_token["MQA"]["fp32"] == 4 * per_token["GQA"]["fp32"],
                mha=per_token["MHA"]["fp32"], gqa=per_token["GQA"]["fp32"], mqa=per_token["MQA"]["fp32"])
    checked = {k: v for k, v in presets.items() if v["measured_bf16_bytes_per_token"] is not None}
    exp.finding("Every preset built here has the bf16 cache bytes per token that mmlab.model.summary predicts",
                bool(checked) and all(v["measured_bf16_bytes_per_token"] == v["bf16_bytes_per_token"]
                                      for v in checked.values()), presets_checked=list(checked))
    exp.finding("The static cache holds its full preallocation from the first step; the growing one holds only "
                "the tokens seen so far (fewer bytes at step 1, the same at the last step)",
                nbytes["static"][0] == nbytes["static"][-1] and nbytes["growing"][0] < nbytes["static"][0]
                and nbytes["growing"][-1] == nbytes["static"][-1],
                static_first=nbytes["static"][0], growing_first=nbytes["growing"][0],
                growing_last=nbytes["growing"][-1])
    exp.finding("Late in decoding, a step with the static cache is faster than with the growing one (which copies "
                "the whole cache at every step)", late["static"] < late["growing"],
                static_ms=late["static"], growing_ms=late["growing"])
    exp.finding("A growing cache's step gets slower as the cache grows (last eighth > 1.2x the first)",
                late["growing"] > 1.2 * early["growing"], first_ms=early["growing"], last_ms=late["growing"])

    fig, axes = figure(3)
    ax = axes[0][0]
    names = list(VARIANTS)
    ax.bar(names, [per_token[n]["fp32"] / 1024 for n in names], color=["C0", "C1", "C2"])
    ax.plot(names, [per_token[n]["formula_fp32"] / 1024 for n in names], "k_", ms=30, mew=2, label="formula")
    ax.set(ylabel="KiB per token (fp32)", title=f"KV cache per token, 4 x {width}, 8 query heads")
    ax.legend()
    ax = axes[0][1]
    x = range(1, steps + 1)
    for i, k in enumerate(traces):
        ax.plot(x, step_ms[k], color=f"C{i}", lw=0.8, label=f"{k} cache")
    ax.set(xlabel="decode step", ylabel="ms per step (median)", title="time per decode step")
    ax.legend()
    ax = axes[0][2]
    for i, k in enumerate(traces):
        ax.plot(x, [b / 2**20 for b in nbytes[k]], color=f"C{i}", label=f"{k} cache")
    ax.set(xlabel="decode step", ylabel="cache MiB", title="memory the cache holds")
    ax.legend()
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
