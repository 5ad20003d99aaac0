"""Does speculative sampling change what the model says? The tokens it emits, against the target's exact
distribution and against plain sampling.

Speculative sampling accepts a draft token with probability min(1, p/q) and on a rejection draws from the
residual max(0, p - q): every token it emits should follow the target's own distribution p, whatever the
draft. The unit tests check this exactly on tiny random models (``tests/test_speculative.py``); here the same
claim is measured on the lesson's real models — the TinyStories target (4 x 128) and its distilled one-block
draft (``_common.py``) — with ``mmlab.infer.speculative.speculative_generate`` at k = 4.

1. The first two tokens after a held-out story opening (for each setting, the opening among the first 32 whose
   first token's entropy is closest to 2 nats: uncertain, but not flat). Their exact distributions are computed
   from the target: p(x1 | prompt), and the marginal of x2, sum over x1 of p(x1) p(x2 | prompt, x1) (one
   batched pass over every possible x1). N speculative samples are compared with them by total variation
   (TV = half the L1 distance).
   An N-sample estimate is never exact, so the yardstick is the *noise floor*: the TV of N samples drawn from
   the exact distribution itself, over many draws (its 99th percentile). Beside speculative sampling: the
   library's plain sampler (``generate``) and, as a negative control, the draft sampling alone — a check that
   could not tell the draft from the target would prove nothing. Two settings: T = 1, and T = 0.8 with top-p 0.9
   (the filters apply to both models).
2. Whole continuations, where the KV caches are rewound after every rejection: the token frequencies of
   speculative continuations against plain ones, with a permutation test (the TV between random halves of the
   pooled samples gives the floor).
"""

import torch
from _common import story_prompts, target, trained_draft

from mmlab.infer.generate import SamplingParams, generate
from mmlab.infer.speculative import sampling_probs, speculative_generate
from mmlab.lab import Experiment
from mmlab.lab.plots import figure

K = 4
ENTROPY = 2.0
SETTINGS = {"T=1": SamplingParams(temperature=1.0), "T=0.8, top-p 0.9": SamplingParams(temperature=0.8, top_p=0.9)}


def tv(a: torch.Tensor, b: torch.Tensor) -> float:
    """Total variation between two distributions (or normalised count vectors) over the vocabulary."""
    return 0.5 * float((a / a.sum() - b / b.sum()).abs().sum())


def freq(tokens: list[int], vocab: int) -> torch.Tensor:
    return torch.bincount(torch.tensor(tokens, dtype=torch.long), minlength=vocab).double()


@torch.no_grad()
def exact_marginals(model, prompt: list[int], params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """p(x1 | prompt) and p(x2 | prompt) = sum_x1 p(x1) p(x2 | prompt, x1), under ``params``' filters."""
    p1 = sampling_probs(model(torch.tensor([prompt])).logits[0, -1], params)[0].double()
    firsts = p1.nonzero()[:, 0]
    p2 = torch.zeros_like(p1)
    for chunk in firsts.split(256):
        rows = torch.tensor([[*prompt, int(a)] for a in chunk])
        p2 += (p1[chunk, None] * sampling_probs(model(rows).logits[:, -1], params).double()).sum(0)
    return p1, p2


def floor(p: torch.Tensor, n: int, draws: int, generator: torch.Generator) -> list[float]:
    """TVs of ``n`` samples drawn from ``p`` itself against ``p``: how far an exact sampler lands by chance."""
    out = []
    for _ in range(draws):
        got = torch.multinomial(p.float(), n, replacement=True, generator=generator)
        out.append(tv(freq(got.tolist(), len(p)), p))
    return sorted(out)


def quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main(exp: Experiment) -> None:
    n = exp.pick(full=4000, quick=800, smoke=20)
    n_long = exp.pick(full=300, quick=80, smoke=4)
    long_tokens = exp.pick(full=64, quick=48, smoke=8)
    draws = exp.pick(full=500, quick=200, smoke=10)
    prompt_len = exp.pick(full=12, quick=12, smoke=6)
    model, tok, base = target(exp)
    draft, draft_info = trained_draft(exp)
    vocab = model.cfg.vocab_size
    # a check on a token the model is sure of proves nothing, and one on a nearly flat distribution needs far more
    # samples: each setting takes the opening (of the first 32) whose first new token has an entropy closest to
    # ENTROPY nats under that setting (about as uncertain as a choice among e^2 ~ 7 equally likely tokens)
    candidates = [p for p, _ in story_prompts(tok, 32, prompt_len, long_tokens)]
    prompts = []
    with torch.no_grad():
        last = model(torch.tensor(candidates)).logits[:, -1]
    for params in SETTINGS.values():
        p = sampling_probs(last, params).double()
        entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
        order = [int(i) for i in (entropy - ENTROPY).abs().argsort() if candidates[int(i)] not in prompts]
        prompts.append(candidates[order[0]] if order else candidates[0])  # (smoke: the openings may all agree)
    exp.set_config(target=base, draft=draft_info, k=K, samples=n, settings={k: vars(v) for k, v in SETTINGS.items()},
                   prompt_tokens=prompt_len, floor_draws=draws, long_samples=n_long, long_tokens=long_tokens,
                   prompts=[tok.decode(p) for p in prompts])
    g = torch.Generator().manual_seed(exp.seed)

    rows, results, plot_data = [], {}, {}
    for (name, params), prompt in zip(SETTINGS.items(), prompts, strict=True):
        sp = {"temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p}
        exact = exact_marginals(model, prompt, params)
        spec, proposed, accepted = [], 0, 0
        for seed in range(n):
            r = speculative_generate(model, draft, prompt, K + 1, k=K, seed=exp.seed * 1_000_000 + seed, **sp)
            spec.append(r.tokens[:2])
            proposed, accepted = proposed + r.proposed, accepted + r.accepted
        plain = generate(model, [prompt] * n, 2, seed=exp.seed + 1, **sp)
        alone = generate(draft, [prompt] * n, 2, seed=exp.seed + 2, **sp)
        res = {"acceptance_rate": accepted / proposed}
        for pos in (0, 1):
            p = exact[pos]
            fl = floor(p, n, draws, g)
            r = {"speculative": tv(freq([s[pos] for s in spec], vocab), p),
                 "plain": tv(freq([s[pos] for s in plain], vocab), p),
                 "draft alone": tv(freq([s[pos] for s in alone], vocab), p),
                 "floor_median": quantile(fl, 0.5), "floor_99": quantile(fl, 0.99),
                 "share_of_exact_draws_farther": sum(v >= tv(freq([s[pos] for s in spec], vocab), p) for v in fl)
                 / len(fl),
                 "support": int((p > 0).sum()), "top_probability": float(p.max())}
            res[f"token {pos + 1}"] = r
            rows.append([name, pos + 1, r["speculative"], r["plain"], r["draft alone"], r["floor_median"],
                         r["floor_99"], r["share_of_exact_draws_farther"]])
            plot_data[(name, pos)] = (p, freq([s[pos] for s in spec], vocab), freq([s[pos] for s in alone], vocab), fl,
                                      r)
        results[name] = res
        exp.log(f"{name}: acceptance {res['acceptance_rate']:.3f}; " + "; ".join(
            f"token {i}: spec {res[f'token {i}']['speculative']:.4f}, draft {res[f'token {i}']['draft alone']:.4f}, "
            f"floor99 {res[f'token {i}']['floor_99']:.4f}" for i in (1, 2)))
    exp.metric("first_tokens", results)
    exp.table("first_tokens", ["setting", "token", "TV speculative", "TV plain sampling", "TV draft alone",
                               "floor: median", "floor: 99th percentile",
                               "exact draws farther than speculative"], rows,
              caption=f"total variation between {n:,} samples and the target's exact distribution of the first and "
                      f"second new token (k = {K}); floor: the TV of {n:,} draws from the exact distribution itself, "
                      f"over {draws} repetitions; the last column is the share of those draws whose TV exceeds "
                      "speculative sampling's (a p-value: small means suspicious).")

    # ---- whole continuations: speculative vs plain token frequencies, permutation test ----
    params = SETTINGS["T=1"]
    prompt = prompts[0]
    spec_long = [speculative_generate(model, draft, prompt, long_tokens, k=K, temperature=1.0,
                                      seed=exp.seed * 1_000_000 + 500_000 + s).tokens for s in range(n_long)]
    plain_long = generate(model, [prompt] * n_long, long_tokens, temperature=params.temperature, seed=exp.seed + 3)
    alone_long = generate(draft, [prompt] * n_long, long_tokens, temperature=params.temperature, seed=exp.seed + 4)

    def pooled(seqs: list[list[int]]) -> torch.Tensor:
        return freq([t for s in seqs for t in s], vocab)

    observed = tv(pooled(spec_long), pooled(plain_long))
    control = tv(pooled(alone_long), pooled(plain_long))
    both = spec_long + plain_long
    null = []
    for _ in range(draws):
        order = torch.randperm(len(both), generator=g).tolist()
        null.append(tv(pooled([both[i] for i in order[:n_long]]), pooled([both[i] for i in order[n_long:]])))
    null.sort()
    long = {"tv_speculative_vs_plain": observed, "tv_draft_vs_plain": control, "null_median": quantile(null, 0.5),
            "null_99": quantile(null, 0.99), "p_value": sum(v >= observed for v in null) / len(null)}
    exp.metric("continuations", long)
    exp.table("continuations", ["comparison", "TV of token frequencies", "permutation floor: median",
                                "permutation floor: 99th percentile"],
              [["speculative vs plain sampling", observed, long["null_median"], long["null_99"]],
               ["draft alone vs plain sampling (control)", control, long["null_median"], long["null_99"]]],
              caption=f"{n_long} continuations of {long_tokens} tokens each at T=1 (k = {K}); token frequencies pooled "
                      f"over all positions; floor: the TV between random halves of the pooled speculative and plain "
                      f"samples, {draws} permutations.")

    # ---- findings ----
    for name, res in results.items():
        exp.finding(f"{name}: speculative sampling's first two tokens are as close to the target's exact distribution "
                    "as exact samples are (TV within the floor's 99th percentile)",
                    all(res[t]["speculative"] <= res[t]["floor_99"] for t in ("token 1", "token 2")),
                    **{f"token{i}_tv": res[f"token {i}"]["speculative"] for i in (1, 2)},
                    **{f"token{i}_floor99": res[f"token {i}"]["floor_99"] for i in (1, 2)})
    exp.finding("The library's plain sampler passes the same check (both settings, both tokens)",
                all(res[t]["plain"] <= res[t]["floor_99"] for res in results.values() for t in ("token 1", "token 2")),
                **{f"{n.split(',')[0]}_token{i}": res[f"token {i}"]["plain"] for n, res in results.items()
                   for i in (1, 2)})
    exp.finding("The check has power: sampling from the draft alone fails it (both settings, both tokens)",
                all(res[t]["draft alone"] > res[t]["floor_99"] for res in results.values()
                    for t in ("token 1", "token 2")),
                **{f"{n.split(',')[0]}_token{i}": res[f"token {i}"]["draft alone"] for n, res in results.items()
                   for i in (1, 2)})
    rates = [res["acceptance_rate"] for res in results.values()]
    exp.finding("Both branches were exercised: the draft's tokens were accepted 20% to 95% of the time",
                all(0.2 < r < 0.95 for r in rates), **{n.split(",")[0]: r for n, r in zip(results, rates,
                                                                                            strict=True)})
    exp.finding("Whole speculative continuations have the token frequencies of plain sampling (TV within the "
                "permutation floor's 99th percentile)", observed <= long["null_99"], tv=observed,
                floor99=long["null_99"])
    exp.finding("The draft's own continuations fail the same permutation test (the control exceeds the floor)",
                control > long["null_99"], tv=control, floor99=long["null_99"])

    # ---- plot ----
    fig, axes = figure(3)
    p, spec_f, alone_f, _, _ = plot_data[("T=1", 0)]
    top = p.argsort(descending=True)[:12]
    x = torch.arange(len(top)).float()
    ax = axes[0][0]
    ax.bar(x - 0.27, p[top], 0.27, label="target, exact", color="k")
    ax.bar(x, (spec_f / spec_f.sum())[top], 0.27, label="speculative", color="C0")
    ax.bar(x + 0.27, (alone_f / alone_f.sum())[top], 0.27, label="draft alone", color="C3")
    ax.set_xticks(x, [repr(tok.decode([int(t)])) for t in top], rotation=60, fontsize=7)
    ax.set(ylabel="probability", title="first token after the prompt (T=1)")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    _, _, _, fl, r = plot_data[("T=1", 1)]
    ax.hist(fl, bins=30, color="0.7", label=f"exact samples (n={n:,})")
    for key, color in (("speculative", "C0"), ("plain", "C2"), ("draft alone", "C3")):
        ax.axvline(r[key], color=color, lw=2, label=key)
    ax.set(xlabel="TV to the exact distribution", ylabel="count", title="second token: distance vs the noise floor")
    ax.legend(fontsize=8)
    ax = axes[0][2]
    ax.hist(null, bins=30, color="0.7", label="random halves (null)")
    ax.axvline(observed, color="C0", lw=2, label="speculative vs plain")
    ax.axvline(control, color="C3", lw=2, label="draft vs plain")
    ax.set(xlabel="TV of token frequencies", ylabel="count", title=f"{long_tokens}-token continuations (T=1)")
    ax.legend(fontsize=8)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
