"""When answers can be checked, what does temperature do: to one answer (pass@1), to the best of n (pass@k), and
to a majority vote?

The lessons' SFT model (``mmlab.lab.posttrain.lesson_sft``: the TinyStories base after SFT on the synthetic
verifiable tasks: add, sub, mul, copy, reverse, fact) answers held-out task prompts in the chat template. Greedy
decoding answers once; at each temperature (no top-k / top-p) the model answers ``n`` times. Each answer is
graded by exact match (``TaskItem.is_correct``). Reported per temperature: pass@1 (the mean accuracy of one
sample), pass@k for k up to n with the unbiased estimator of Chen et al. 2021 (the chance that at least one of k
samples is right, estimated from all n), and majority vote (the most common of the n answers: self-consistency,
Wang et al. 2022). pass@k is what a *checker* makes of diversity — best-of-n with a verifier, and the signal
GRPO learns from; majority vote needs no checker.
"""

from collections import Counter
from itertools import pairwise
from math import comb

import torch

from mmlab.data.synthetic import TASKS
from mmlab.infer.generate import generate
from mmlab.lab import Experiment
from mmlab.lab.plots import figure
from mmlab.lab.posttrain import heldout_tasks, lesson_sft, sft_settings
from mmlab.tokenizer.chat import IM_END, encode_chat
from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model

TEMPERATURES = [0.3, 0.6, 1.0, 1.3]
MAX_NEW_TOKENS = 12


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n - c, k) / C(n, k)."""
    return 1.0 - comb(n - c, k) / comb(n, k) if n - c >= k else 1.0


def main(exp: Experiment) -> None:
    n_items = exp.pick(full=300, quick=120, smoke=6)
    n = exp.pick(full=16, quick=8, smoke=2)
    ks = [k for k in (1, 2, 4, 8, 16) if k <= n]
    folder = lesson_sft(exp)
    model, tok = load_model(folder).eval(), load_checkpoint_tokenizer(folder)
    items = heldout_tasks(exp, n_items)
    stop = tok.token_to_id(IM_END)
    exp.set_config(model=sft_settings(exp), items=n_items, samples_per_item=n, temperatures=TEMPERATURES, ks=ks,
                   max_new_tokens=MAX_NEW_TOKENS, tasks=list(TASKS), grading="exact match after trimming")

    def answers(item, count: int, temperature: float, seed: int) -> list[str]:
        ids, _ = encode_chat(tok, [{"role": "user", "content": item.prompt}], add_generation_prompt=True)
        outs = generate(model, [ids] * count, MAX_NEW_TOKENS, temperature=temperature, stop_tokens=[stop], seed=seed)
        return [tok.decode(o).strip() for o in outs]

    # correct[setting][i] = how many of item i's answers are right; votes[setting][i] = the majority answer right?
    correct, votes, per_task = {}, {}, {}
    with torch.no_grad():
        correct["greedy"] = [int(it.is_correct(answers(it, 1, 0.0, 0)[0])) for it in items]
        for t in TEMPERATURES:
            name = f"T={t}"
            correct[name], votes[name] = [], []
            for i, it in enumerate(items):
                got = answers(it, n, t, exp.seed * 100_000 + int(t * 10) * 1000 + i)
                correct[name].append(sum(it.is_correct(a) for a in got))
                votes[name].append(it.is_correct(Counter(got).most_common(1)[0][0]))
    settings = ["greedy", *(f"T={t}" for t in TEMPERATURES)]
    passk = {"greedy": {k: sum(correct["greedy"]) / len(items) for k in ks}}
    for name in settings[1:]:
        passk[name] = {k: sum(pass_at_k(n, c, k) for c in correct[name]) / len(items) for k in ks}
    vote = {name: sum(v) / len(items) for name, v in votes.items()}
    top = ks[-1]
    for name in settings:
        samples = 1 if name == "greedy" else n
        per_task[name] = {}
        for task in TASKS:
            cs = [c for c, it in zip(correct[name], items, strict=True) if it.task == task]
            per_task[name][task] = {"pass@1": sum(cs) / samples / len(cs),
                                    f"pass@{top}": sum(pass_at_k(samples, c, min(top, samples)) for c in cs) / len(cs)}
        exp.log(f"{name}: " + ", ".join(f"pass@{k} {v:.3f}" for k, v in passk[name].items()) +
                (f", majority {vote[name]:.3f}" if name in vote else ""))

    exp.metric("pass_at_k", passk)
    exp.metric("majority_vote", vote)
    exp.metric("per_task", per_task)
    exp.table("temperature", ["decoding", *(f"pass@{k}" for k in ks), f"majority of {n}"],
              [[name, *passk[name].values(), vote.get(name)] for name in settings],
              caption=f"{n_items} held-out task prompts ({n_items // len(TASKS)} per task), {n} samples per prompt at "
                      "each temperature (greedy: one answer, the same for every k); pass@k by the unbiased "
                      "estimator; majority: the most common of the n answers.")
    shown = [(name, col) for name in ("T=0.3", "T=1.0") for col in ("pass@1", f"pass@{top}")]
    exp.table("per_task", ["task", "greedy", *(f"{col}, {name}" for name, col in shown)],
              [[task, per_task["greedy"][task]["pass@1"], *(per_task[name][task][col] for name, col in shown)]
               for task in TASKS],
              caption=f"per task ({n_items // len(TASKS)} prompts each): greedy exact match, and one answer (pass@1) "
                      f"against the best of {top} (pass@{top}) at two temperatures.")

    # ---- findings ----
    greedy = passk["greedy"][1]
    p1 = [passk[f"T={t}"][1] for t in TEMPERATURES]
    exp.finding("For a single answer greedy beats sampling at T=1 (pass@1)", greedy > passk["T=1.0"][1],
                greedy=greedy, t1=passk["T=1.0"][1])
    exp.finding("For a single answer greedy also beats low-temperature sampling (T=0.3)", greedy > passk["T=0.3"][1],
                greedy=greedy, t03=passk["T=0.3"][1])
    exp.finding("pass@1 falls at every step of temperature (0.3, 0.6, 1.0, 1.3)",
                all(a > b for a, b in pairwise(p1)), **{f"t{t}": v for t, v in zip(TEMPERATURES, p1, strict=True)})
    exp.finding(f"With a checker, sampling wins: pass@{top} at T=1 beats greedy's one answer",
                passk["T=1.0"][top] > greedy, **{f"pass_at_{top}": passk["T=1.0"][top]}, greedy=greedy)
    exp.finding(f"Too hot hurts even with {top} tries: pass@{top} at T=1.3 is lower than at T=1.0",
                passk["T=1.3"][top] < passk["T=1.0"][top], t13=passk["T=1.3"][top], t10=passk["T=1.0"][top])
    best_vote = max(vote, key=vote.get)
    exp.finding(f"A majority vote of {n} samples beats greedy at some temperature (self-consistency)",
                vote[best_vote] > greedy, best=best_vote, vote=vote[best_vote], greedy=greedy)

    # ---- plot ----
    fig, axes = figure(2)
    ax = axes[0][0]
    for name in settings:
        ax.plot(ks, [passk[name][k] for k in ks], "o-" if name != "greedy" else "k--", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set(xlabel="k (answers tried)", ylabel="pass@k (exact match)", title="best of k, with a checker")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    ax.plot(TEMPERATURES, p1, "o-", label="pass@1")
    ax.plot(TEMPERATURES, [passk[f"T={t}"][top] for t in TEMPERATURES], "s-", label=f"pass@{top}")
    ax.plot(TEMPERATURES, [vote[f"T={t}"] for t in TEMPERATURES], "^-", label=f"majority of {top}")
    ax.axhline(greedy, color="k", ls="--", lw=1, label="greedy")
    ax.set(xlabel="temperature", ylabel="exact match", title="one answer, the best of n, or a vote")
    ax.legend(fontsize=8)
    exp.savefig(fig)


if __name__ == "__main__":
    Experiment.cli(__doc__, main, __file__)
