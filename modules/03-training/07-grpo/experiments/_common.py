"""Shared by the GRPO lesson's experiments: a GRPO run from the lessons' shared SFT checkpoint, and how far
the policy drifted from it."""

import statistics
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmlab.infer.generate import generate
from mmlab.lab.posttrain import lesson_sft, stage_config
from mmlab.tokenizer.chat import IM_END, encode_chat
from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model
from mmlab.train.grpo import grpo, task_prompts
from mmlab.train.ppo import ppo

LR = 3e-5  # exp3_learning_rate: at 3e-4 (the speedrun's rate before this lesson) this model's held-out accuracy falls
COMPLETIONS = 32  # sampled completions per optimizer step (prompts x group size)
MAX_NEW = 12


def run(exp: Any, out: Path, steps: int, group_size: int, kl_coef: float, lr: float = LR, method: str = "grpo",
        **stage_kwargs: Any) -> dict[str, Any]:
    """GRPO (or ``method="ppo"``: PPO with a critic) of the shared SFT model into ``out`` with
    ``COMPLETIONS // group_size`` prompts per step; ``stage_kwargs`` go to the stage (e.g. ``ppo_epochs``)."""
    prompts = max(1, COMPLETIONS // group_size) if exp.mode != "smoke" else 1
    cfg = stage_config(exp, out, steps, lr, batch_size=prompts, eval_interval=steps)
    stage = {"grpo": grpo, "ppo": ppo}[method]
    r = stage(lesson_sft(exp), cfg, group_size=group_size, kl_coef=kl_coef, max_new_tokens=MAX_NEW,
              n_heldout=exp.pick(300, 60, 6), **stage_kwargs)
    return r | {"kl_to_start": kl_to_start(exp, out)}


@torch.no_grad()
def kl_to_start(exp: Any, out: Path, n: int | None = None) -> float:
    """KL(policy || start) in nats per completion token: at every position of completions the policy samples
    (at temperature 1) for held-out task prompts, the exact KL between the two next-token distributions."""
    policy, start = load_model(out).eval(), load_model(lesson_sft(exp)).eval()
    tok = load_checkpoint_tokenizer(out)
    stop = tok.token_to_id(IM_END)
    diffs = []
    for i, p in enumerate(task_prompts(n or exp.pick(100, 30, 4), seed=exp.seed + 20_000)):
        ids, _ = encode_chat(tok, p.messages, add_generation_prompt=True)
        new = generate(policy, ids, MAX_NEW, temperature=1.0, stop_tokens=[stop], seed=exp.seed + i)[0]
        seq = ids + new
        x = torch.tensor([seq[:-1]])
        at = slice(len(ids) - 1, len(seq) - 1)  # the positions that predict the completion's tokens
        log_p = F.log_softmax(policy(x).logits[0, at].float(), dim=-1)
        log_q = F.log_softmax(start(x).logits[0, at].float(), dim=-1)
        diffs += (log_p.exp() * (log_p - log_q)).sum(-1).tolist()
    return statistics.fmean(diffs) if diffs else float("nan")


def smooth(values: list[float], k: int = 10) -> list[float]:
    return [statistics.fmean(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]
