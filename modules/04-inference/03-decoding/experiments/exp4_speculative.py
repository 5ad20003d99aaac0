"""Speculative decoding with a small draft: how often is the draft accepted, how many target passes does it save,
and does it make decoding faster on this CPU?

Target: the lessons' TinyStories model (4 x 128). Two drafts of one block with its tokenizer (``_common.py``):
a free *early exit* — a copy of the target's first block with its embedding, final norm and head, no training —
and the same early exit *distilled*: trained briefly to match the target's next-token distribution (once,
cached). ``mmlab.infer.speculative.speculative_generate`` lets the
draft propose k tokens and the target check them in one pass, for k from 1 to 8, greedy and sampled (T=1);
plain decoding is ``mmlab.infer.generate.generate``, both with static KV caches, batch 1, no stop token. Held-out
story openings as prompts; timings are medians over repeats with every variant interleaved.

Measured per variant: the acceptance rate (accepted / proposed draft tokens), new tokens per target forward
pass (plain decoding: 1), and wall-clock speed against plain decoding. Beside them, two predictions from
Leviathan et al. 2023: with a per-token acceptance probability alpha (measured at k = 1), a round yields
(1 - alpha^(k+1)) / (1 - alpha) tokens on average; with a draft step costing c target steps, the expected
speed-up is that over (c k + 1). Also measured: what one target pass costs when it scores 1 to 9 positions —
the premise of speculation is that scoring k + 1 positions costs about as much as scoring one.
"""

import statistics
import time
from itertools import pairwise

import torch
from _common import early_exit, story_prompts, target, trained_draft

from mmlab.infer.generate import generate
from mmlab.infer.speculative import speculative_generate
from mmlab.lab import Experiment
from mmlab.lab.plots import figure

MODES = {"greedy": 0.0, "sampled (T=1)": 1.0}


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens per round (accepted drafts + the target's own token) when each draft token is accepted with
    probability alpha independently: 1 + alpha + ... + alpha^k."""
    return sum(alpha**i for i in range(k + 1))


@torch.no_grad()
def pass_ms(model, prompt: list[int], positions: int, repeats: int) -> float:
    """Median milliseconds of one cached forward pass that scores ``positions`` new tokens after the prompt."""
    cache = model.new_cache(static=True)
    model(torch.tensor([prompt]), cache=cache)
    held = cache.seq_len
    x = torch.tensor([prompt[:positions]])
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(x, cache=cache)
        times.append(time.perf_counter() - t)
        cache.seq_len = held  # forget the scored positions: the static cache overwrites them next time
    return 1000 * statistics.median(times)


def main(exp: Experiment) -> None:
    n_prompts = exp.pick(full=8, quick=3, smoke=1)
    prompt_len = exp.pick(full=16, quick=16, smoke=8)
    new_tokens = exp.pick(full=96, quick=64, smoke=8)
    ks = exp.pick(full=[1, 2, 4, 6, 8], quick=[1, 2, 4, 8], smoke=[1, 2])
    repeats = exp.pick(full=5, quick=2, smoke=1)
    model, tok, base = target(exp)
    distilled, draft_info = trained_draft(exp)
    drafts = {"distilled early exit": distilled, "early exit (untrained)": early_exit(model, 1)}
    prompts = [p for p, _ in story_prompts(tok, n_prompts, prompt_len, new_tokens)]
    exp.set_config(target=base, draft=draft_info, early_exit="a copy of the target's first block with its embedding, "
                   "final norm and head",
                   ks=ks, modes=MODES, prompts=n_prompts, prompt_tokens=prompt_len, new_tokens=new_tokens,
                   repeats=repeats, threads=torch.get_num_threads(), batch=1, kv_cache="static")
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in [("target", model), *drafts.items()]}
    exp.metric("params", params)

    # every variant decodes one prompt (index i, seeded by i) and returns the tokens and, if speculative, the counts
    variants = {}
    for mode, t in MODES.items():
        variants[(mode, "plain", 0)] = lambda i, t=t: {
            "tokens": generate(model, prompts[i], new_tokens, temperature=t, seed=i)[0]}
        for name, d in drafts.items():
            variants[(mode, name, 0)] = lambda i, t=t, d=d: {  # the draft alone: what one of its steps costs
                "tokens": generate(d, prompts[i], new_tokens, temperature=t, seed=i)[0]}
            for k in ks:
                variants[(mode, name, k)] = lambda i, t=t, d=d, k=k: speculative_generate(
                    model, d, prompts[i], new_tokens, k=k, temperature=t, seed=i).as_dict()
    exp.log(f"{len(variants)} variants x {n_prompts} prompts x {new_tokens} tokens, {repeats} timed repeats")
    # the warm-up run gives the counts (seeded: every run is the same); then each prompt's runs are interleaved
    runs = {key: [fn(i) for i in range(n_prompts)] for key, fn in variants.items()}
    times = {key: [[] for _ in prompts] for key in variants}
    for _ in range(repeats):
        for i in range(n_prompts):
            for key, fn in variants.items():
                t0 = time.perf_counter()
                fn(i)
                times[key][i].append(time.perf_counter() - t0)
    sec = {key: sum(statistics.median(t) for t in ts) for key, ts in times.items()}  # all prompts, median runs

    # ---- per variant ----
    same_as_plain = all(r["tokens"] == p["tokens"] for key, rs in runs.items() if key[0] == "greedy" and key[2]
                        for r, p in zip(rs, runs[("greedy", "plain", 0)], strict=True))
    rows, res = [], {}
    for mode in MODES:
        plain = sec[(mode, "plain", 0)]
        for name in drafts:
            c = sec[(mode, name, 0)] / plain  # a draft step, in target steps
            alpha = None
            for k in ks:
                rs = runs[(mode, name, k)]
                proposed, accepted = sum(r["proposed"] for r in rs), sum(r["accepted"] for r in rs)
                tokens = sum(len(r["tokens"]) for r in rs)
                passes = sum(r["target_forwards"] for r in rs)
                verify = passes - sum(len(p) > 1 for p in prompts)  # passes after the prefill
                if k == ks[0]:
                    alpha = accepted / proposed  # at k = 1: the per-token acceptance probability
                r = {"acceptance_rate": accepted / proposed, "tokens_per_target_pass": tokens / passes,
                     "tokens_per_round": tokens / verify, "predicted_tokens_per_round": expected_tokens(alpha, k),
                     "draft_cost_c": c, "speedup": plain / sec[(mode, name, k)],
                     "predicted_speedup": expected_tokens(alpha, k) / (c * k + 1),
                     "draft_forwards_per_token": sum(r["draft_forwards"] for r in rs) / tokens}
                res[f"{mode} | {name} | k={k}"] = r
                rows.append([mode, name, k, r["acceptance_rate"], r["tokens_per_target_pass"], r["tokens_per_round"],
                             r["predicted_tokens_per_round"], r["speedup"], r["predicted_speedup"]])
                exp.log(f"{mode} {name} k={k}: " + ", ".join(f"{a} {b:.3f}" for a, b in r.items()))
    exp.metric("variants", res)
    exp.metric("seconds_median", {" | ".join(map(str, key)): v for key, v in sec.items()})
    exp.metric("greedy_tokens_equal_plain", same_as_plain)
    exp.table("speculative", ["mode", "draft", "k", "acceptance rate", "new tokens per target pass",
                              "tokens per round", "predicted from alpha at k=1", "speed vs plain (wall)",
                              "predicted speed (c k + 1 model)"], rows,
              caption=f"{n_prompts} held-out story openings, {new_tokens} new tokens each, batch 1; wall time: the "
                      f"sum over prompts of the median of {repeats} interleaved runs, on a CPU with "
                      f"{torch.get_num_threads()} thread(s). "
                      "Plain decoding needs one target pass per token (1.0 in the 'per target pass' column).")
    exp.metric("draft_step_cost_c", {f"{mode} | {name}": sec[(mode, name, 0)] / sec[(mode, "plain", 0)]
                                     for mode in MODES for name in drafts})

    # ---- what a pass costs by positions scored ----
    positions = [1, 2, 5, 9]
    reps = exp.pick(full=200, quick=50, smoke=3)
    cost = {name: [pass_ms(m, prompts[0], n, reps) for n in positions]
            for name, m in [("target", model), *drafts.items()]}
    exp.metric("pass_ms", cost)
    exp.table("pass_cost", ["model", *(f"ms, {n} position{'s' * (n > 1)}" for n in positions),
                            f"{positions[-1]} positions / 1"],
              [[name, *v, v[-1] / v[0]] for name, v in cost.items()],
              caption=f"one cached forward pass after a {prompt_len}-token prompt; median of {reps}. A target pass "
                      "that checks k draft tokens scores k + 1 positions.")

    # ---- findings ----
    def at(mode: str, name: str, k: int) -> dict:
        return res[f"{mode} | {name} | k={k}"]

    dist, ee = list(drafts)
    exp.finding("Speculative greedy decoding returns exactly the target's own greedy tokens (every prompt, draft and "
                "k)", same_as_plain, prompts=n_prompts, ks=ks)
    exp.finding("The distilled draft is accepted more often than the early-exit draft, greedy and sampled (k = 1)",
                all(at(m, dist, ks[0])["acceptance_rate"] > at(m, ee, ks[0])["acceptance_rate"] for m in MODES),
                **{f"{m.split()[0]}_{n.split()[0]}": at(m, n, ks[0])["acceptance_rate"] for m in MODES
                   for n in drafts})
    exp.finding("With the distilled draft the target needs fewer forward passes than plain decoding at every k "
                "(both modes)", all(at(m, dist, k)["tokens_per_target_pass"] > 1 for m in MODES for k in ks),
                **{f"{m.split()[0]}_k{k}": at(m, dist, k)["tokens_per_target_pass"] for m in MODES
                   for k in (ks[0], ks[-1])})
    exp.finding("The acceptance rate (accepted / proposed) falls as k grows (distilled draft, both modes)",
                all(a["acceptance_rate"] > b["acceptance_rate"] for m in MODES
                    for a, b in pairwise([at(m, dist, k) for k in ks])),
                **{f"{m.split()[0]}_k{k}": at(m, dist, k)["acceptance_rate"] for m in MODES for k in ks})
    worst = max(abs(at(m, dist, ks[-1])["tokens_per_round"] / at(m, dist, ks[-1])["predicted_tokens_per_round"] - 1)
                for m in MODES)
    exp.finding(f"The independent-acceptance formula, with alpha from k = 1, predicts the tokens per round at k = "
                f"{ks[-1]} within 20% (distilled draft, both modes)", worst < 0.2, largest_relative_error=worst)
    for m in MODES:
        best_k = max(ks, key=lambda k, m=m: at(m, dist, k)["speedup"])
        exp.finding(f"On this CPU the distilled draft makes {m} decoding faster than plain decoding (wall time, at its "
                    "best k)", at(m, dist, best_k)["speedup"] > 1, best_k=best_k,
                    speedup=at(m, dist, best_k)["speedup"])
    exp.finding("The untrained early exit makes decoding slower than plain decoding at every k, in both modes",
                all(at(m, ee, k)["speedup"] < 1 for m in MODES for k in ks),
                best=max(at(m, ee, k)["speedup"] for m in MODES for k in ks))
    exp.finding("Measured speed-ups fall short of the c k + 1 cost model's prediction for every draft, k and mode",
                all(r["speedup"] < r["predicted_speedup"] for r in res.values()),
                best_measured=max(r["speedup"] for r in res.values()),
                best_predicted=max(r["predicted_speedup"] for r in res.values()))
    exp.finding(f"Scoring {positions[-1]} positions costs the target less than twice as much as scoring one",
                cost["target"][-1] < 2 * cost["target"][0], ratio=cost["target"][-1] / cost["target"][0])

    # ---- plot ----
    fig, axes = figure(3)
    styles = {(m, n): (f"C{i}", "-" if j == 0 else "--") for j, m in enumerate(MODES) for i, n in enumerate(drafts)}
    for (m, n), (color, ls) in styles.items():
        label = f"{n}, {m}"
        axes[0][0].plot(ks, [at(m, n, k)["acceptance_rate"] for k in ks], "o" + ls, color=color, label=label)
        axes[0][1].plot(ks, [at(m, n, k)["tokens_per_round"] for k in ks], "o" + ls, color=color, label=label)
        axes[0][1].plot(ks, [at(m, n, k)["predicted_tokens_per_round"] for k in ks], ":", color=color, lw=1)
        axes[0][2].plot(ks, [at(m, n, k)["speedup"] for k in ks], "o" + ls, color=color, label=label)
    axes[0][2].axhline(1, color="k", lw=1)
    axes[0][0].set(xlabel="k (draft tokens per round)", ylabel="accepted / proposed", title="acceptance rate")
    axes[0][1].set(xlabel="k", ylabel="tokens per target pass (after prefill)",
                   title="tokens per round (dotted: predicted from alpha)")
    axes[0][2].set(xlabel="k", ylabel="speed vs plain decoding (wall)", title=f"wall time on this CPU "
                                                                           f"({torch.get_num_threads()} thread(s))")
    axes[0][0].legend(fontsize=7)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
