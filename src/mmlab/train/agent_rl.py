"""Multi-turn RL with tools: GRPO (or CISPO) on whole agent episodes.

A rollout is an episode of ``mmlab.infer.agent.run_agent``: the policy writes a turn, a tool runs, the
tool's response is appended, the policy writes again, until it answers. The reward comes once, at the
end: 1 when the final answer is exactly right, 0 otherwise (a wrong call, a bad call, running out of
turns: all 0). As in GRPO (``mmlab.train.grpo``) each prompt gets a group of G episodes and each episode's
advantage is its reward normalised within the group. Every token the *model* wrote in the episode gets
that advantage; the prompt, the template and the tool responses are in the sequence as context but are
never targets (``AgentEpisode.mask``): the policy is not trained to predict what a tool returns, and the
gradient does not push on tokens it did not choose.

Two policy losses, per model-written token, with ``ratio = pi(token) / pi_old(token)`` (the sampling
policy's probability, recorded when a rollout is reused for ``ppo_epochs > 1`` optimizer steps):

- ``grpo``: PPO's clipped surrogate, ``-min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)``. Where the clip
  binds (ratio above 1 + eps with A > 0, or below 1 - eps with A < 0) the term is a constant: that token
  gets **no gradient** at all for the rest of the rollout's reuse.
- ``cispo`` (MiniMax-M1, 2025: Clipped IS-weight Policy Optimization): ``-sg(min(ratio, 1 + eps_high)) * A *
  log pi(token)``. The importance-sampling weight is clipped (so one off-policy token cannot dominate)
  and detached (``sg``, stop-gradient: it is a weight, not something to optimise), and the gradient goes
  through ``log pi`` of **every** token, clipped or not: ``d loss / d log pi = -w * A``. Nothing is
  dropped. MiniMax found PPO-style clipping drops exactly the rare, low-probability tokens that start a
  change of course (their ratio moves most after an update), which slows RL; CISPO keeps their gradient
  and only bounds its weight. There is no lower clip (MiniMax sets eps_low so large it never binds and tunes
  only eps_high; the default here, 0.28, is DAPO's "clip-higher" bound, as in several open implementations).

On a rollout's first use the ratio is exactly 1 in both: ``-A`` and ``-A log pi`` have the same gradient,
so with ``ppo_epochs = 1`` the two losses train identically. They differ only on reused, off-policy
rollouts. Both are summed over model tokens and divided by their count (a token-level mean). An optional
k3 KL penalty to the frozen start is shared with ``mmlab.train.grpo``.

``AgentRolloutSource`` is a BatchSource, so the one ``Trainer`` runs it like any other stage.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mmlab.errors import ConfigError
from mmlab.infer.agent import AgentEpisode, run_agent
from mmlab.model.lm import IGNORE_INDEX
from mmlab.tokenizer.base import Tokenizer
from mmlab.tools import ToolRunner
from mmlab.train.grpo import (
    GRPOLoss,
    RLPrompt,
    ServedRollouts,
    check_rollout_settings,
    group_advantages,
    load_policy,
    nan_safe,
    pad_rows,
    token_logprobs,
)

EVAL_FILE = "agent_rl_eval.json"
LOSSES = ("grpo", "cispo")


def answer_reward(episode: AgentEpisode, answer: str) -> float:
    """1 when the episode ended with a final answer equal to ``answer`` (spaces trimmed), else 0."""
    return float(episode.answer is not None and episode.answer.strip() == answer.strip())


def episode_rows(episode: AgentEpisode) -> tuple[list[int], list[int]]:
    """(x, y) of one episode for the loss: x = ids[:-1]; y = the next token where the model wrote it,
    IGNORE_INDEX where the next token is prompt, template or a tool's response."""
    ids, mask = episode.ids, episode.mask
    return ids[:-1], [t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:], strict=True)]


def cispo_policy_loss(logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor,
                      eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CISPO per token, (B, T): ``-sg(min(ratio, 1 + eps_high)) * A * logp``, and a (B, T) 0/1 mask of the
    tokens whose weight was capped (they still get a gradient, ``-(1 + eps_high) * A``). adv: (B, 1) or (B, T)."""
    ratio = torch.exp(logp - old).detach()
    weight = ratio.clamp(max=1 + eps_high)
    return -weight * adv * logp, (ratio > 1 + eps_high).float()


class AgentRLLoss(GRPOLoss):
    """The policy loss (``grpo`` or ``cispo``) on model-written tokens, plus ``kl_coef`` x k3 to a frozen
    reference; summed over those tokens (``count_tokens`` counts them: the trainer's loss is a per-token mean)."""

    def __init__(self, loss: str = "grpo", reference: torch.nn.Module | None = None, kl_coef: float = 0.0,
                 clip_eps: float = 0.2, eps_high: float = 0.28, temperature: float = 1.0):
        check_loss(loss, kl_coef, clip_eps, eps_high)
        super().__init__(reference, kl_coef=kl_coef, clip_eps=clip_eps, temperature=temperature)
        self.loss, self.eps_high = loss, eps_high

    def policy_loss(self, logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.loss == "cispo":
            return cispo_policy_loss(logp, old, adv, self.eps_high)
        return super().policy_loss(logp, old, adv)


def check_loss(loss: str, kl_coef: float, clip_eps: float, eps_high: float) -> None:
    if loss not in LOSSES:
        raise ConfigError(f"loss={loss!r} is not one of: {', '.join(LOSSES)}")
    if not kl_coef >= 0 or not 0 < clip_eps < 1 or not eps_high > 0:
        raise ConfigError(f"kl_coef={kl_coef} must be >= 0, clip_eps={clip_eps} in (0, 1), eps_high={eps_high} > 0")


class AgentRolloutSource(ServedRollouts):
    """Draws prompts, runs ``group_size`` sampled episodes per prompt with the live policy, scores each final
    answer and returns ``(x, y, advantages, old_logprobs)``; each rollout batch serves ``ppo_epochs``
    consecutive optimizer steps. ``history``: one record per rollout batch."""

    def __init__(self, model: torch.nn.Module, tok: Tokenizer, prompts: Sequence[RLPrompt], runner: ToolRunner,
                 group_size: int = 8, max_turns: int = 3, max_new_tokens: int = 48, temperature: float = 1.0,
                 ppo_epochs: int = 1, show_tools: bool = False,
                 reward: Callable[[AgentEpisode, str], float] = answer_reward):
        check_rollout_settings(group_size, temperature, max_new_tokens, ppo_epochs)
        if not prompts:
            raise ConfigError("no prompts")
        self.model, self.tok, self.prompts, self.runner = model, tok, list(prompts), runner
        self.group_size, self.max_turns, self.max_new_tokens = group_size, max_turns, max_new_tokens
        self.temperature, self.ppo_epochs, self.show_tools, self.reward = temperature, ppo_epochs, show_tools, reward
        self.history: list[dict[str, float]] = []

    def episodes(self, prompt: RLPrompt, generator: torch.Generator) -> list[AgentEpisode]:
        seeds = torch.randint(2**31 - 1, (self.group_size,), generator=generator).tolist()
        return [run_agent(self.model, self.tok, prompt.messages, self.runner, self.max_turns, self.max_new_tokens,
                          self.temperature, seed=s, show_tools=self.show_tools) for s in seeds]

    @torch.no_grad()
    def rollout(self, prompts: Sequence[RLPrompt], generator: torch.Generator) -> tuple:
        eps = [(p, e) for p in prompts for e in self.episodes(p, generator)]
        for p, e in eps:
            if not e.turns:
                raise ConfigError(f"a prompt of {len(e.ids)} tokens leaves no room to answer (max_seq_len "
                                  f"{self.model.cfg.max_seq_len}): {p.messages[-1]['content'][:60]!r}")
        rewards = torch.tensor([self.reward(e, p.answer) for p, e in eps]).view(len(prompts), self.group_size)
        rows, targets = zip(*(episode_rows(e) for _, e in eps), strict=True)
        x, y = pad_rows(rows, targets)
        self.history.append(rollout_record([e for _, e in eps], rewards))
        adv = group_advantages(rewards).view(-1)
        old = torch.full(x.shape, float("nan"))  # nan: "use the current log-probs" (first use of a rollout)
        if self.ppo_epochs > 1:
            device = next(self.model.parameters()).device
            old = token_logprobs(self.model, x.to(device), y.to(device), self.temperature).float().cpu()
        return x, y, adv, old


def rollout_record(episodes: Sequence[AgentEpisode], rewards: torch.Tensor) -> dict[str, float]:
    calls = sum(e.n_calls for e in episodes)
    attempts = calls + sum(e.n_bad_calls for e in episodes)
    return {"reward": float(rewards.mean()), "signal": float((rewards.std(dim=1) > 0).float().mean()),
            "turns": statistics.fmean(len(e.turns) for e in episodes),
            "used_tool": statistics.fmean(e.n_calls + e.n_bad_calls > 0 for e in episodes),
            "call_validity": calls / attempts if attempts else float("nan"),
            "tool_errors": sum(e.n_tool_errors for e in episodes) / max(1, calls),
            "model_tokens": statistics.fmean(sum(e.mask) for e in episodes)}


@torch.no_grad()
def evaluate_agent(model: torch.nn.Module, tok: Tokenizer, prompts: Sequence[RLPrompt], runner: ToolRunner,
                   groups: Sequence[str] | None = None, max_turns: int = 3, max_new_tokens: int = 48,
                   show_tools: bool = False, n_samples: int = 3) -> dict[str, Any]:
    """Greedy episodes on held-out prompts: exact-answer accuracy (overall and per group label), the share
    of episodes that called a tool, the share of attempted calls that could be read (``call_validity``),
    the share of read calls the tool refused, mean turns, how episodes ended, and a few transcripts."""
    was_training = model.training
    model.eval()
    groups = list(groups) if groups is not None else ["all"] * len(prompts)
    hits: dict[str, list[bool]] = {}
    episodes, samples = [], []
    for p, g in zip(prompts, groups, strict=True):
        e = run_agent(model, tok, p.messages, runner, max_turns, max_new_tokens, temperature=0.0,
                      show_tools=show_tools)
        episodes.append(e)
        hits.setdefault(g, []).append(answer_reward(e, p.answer) == 1.0)
        if len(samples) < n_samples:
            samples.append({"prompt": p.messages[-1]["content"], "answer": p.answer, "episode": [
                {"text": t.text, "tool_results": [r.content for r in t.results]} for t in e.turns],
                "final": e.answer})
    model.train(was_training)
    calls = sum(e.n_calls for e in episodes)
    attempts = calls + sum(e.n_bad_calls for e in episodes)
    every = [h for v in hits.values() for h in v]
    stops = {s: sum(e.stop == s for e in episodes) / len(episodes) for s in sorted({e.stop for e in episodes})}
    return {"accuracy": sum(every) / len(every), "by_group": {g: sum(v) / len(v) for g, v in hits.items()},
            "n": len(every), "used_tool": statistics.fmean(e.n_calls + e.n_bad_calls > 0 for e in episodes),
            "call_validity": calls / attempts if attempts else float("nan"),
            "tool_errors": sum(e.n_tool_errors for e in episodes) / calls if calls else float("nan"),
            "turns": statistics.fmean(len(e.turns) for e in episodes), "stops": stops, "samples": samples}


def tool_task_prompts(tasks: Sequence[Any]) -> list[RLPrompt]:
    """``mmlab.data.tool_tasks`` tasks as RL prompts (the question, and the tool's result as the answer)."""
    return [RLPrompt(t.messages(), t.answer) for t in tasks]


def tool_task_split(n_train: int, n_heldout: int, seed: int, kinds: Sequence[str] | None = None) -> tuple[list, list]:
    """Training tasks and held-out tasks from another seed with no training prompt (``heldout_tool_tasks``)."""
    from mmlab.data.tool_tasks import KINDS, heldout_tool_tasks, make_tool_tasks

    kinds = tuple(kinds or KINDS)
    train = make_tool_tasks(n_train, seed=seed, kinds=kinds)
    return train, heldout_tool_tasks(n_heldout, seed=seed + 10_000, train=train, kinds=kinds)


# ---- the stage -------------------------------------------------------------------------------
def agent_rl(base: str | Path, train_cfg: Any, prompts: Sequence[RLPrompt], heldout: Sequence[RLPrompt], *,
             heldout_groups: Sequence[str] | None = None, loss: str = "grpo", group_size: int = 8,
             ppo_epochs: int = 1, clip_eps: float = 0.2, eps_high: float = 0.28, kl_coef: float = 0.0,
             max_turns: int = 3, max_new_tokens: int = 48, temperature: float = 1.0, show_tools: bool = False,
             runner: ToolRunner | None = None, overwrite: bool = False, **trainer_kwargs: Any) -> dict[str, Any]:
    """RL-tune the checkpoint ``base`` (a model SFT-trained to use tools) on agent episodes of ``prompts``;
    held-out greedy accuracy and tool use before and after, and the rollout history, go to
    ``<out>/agent_rl_eval.json``. ``train_cfg.batch_size`` is prompts per step."""
    import time

    from mmlab.train.pretrain import clear_run
    from mmlab.train.stages import refuse_existing_run, write_report
    from mmlab.train.trainer import Trainer

    out = Path(train_cfg.out_dir)
    refuse_existing_run(out, False, overwrite)
    check_loss(loss, kl_coef, clip_eps, eps_high)
    check_rollout_settings(group_size, temperature, max_new_tokens, ppo_epochs)
    _, tok, _, model, reference = load_policy(base, train_cfg, kl_coef=kl_coef, ppo_epochs=ppo_epochs)
    runner = runner or ToolRunner()
    ev = {"max_turns": max_turns, "max_new_tokens": max_new_tokens, "show_tools": show_tools}

    def measure() -> dict[str, Any]:
        return evaluate_agent(model, tok, heldout, runner, heldout_groups, **ev)

    source = AgentRolloutSource(model, tok, prompts, runner, group_size=group_size, max_turns=max_turns,
                                max_new_tokens=max_new_tokens, temperature=temperature, ppo_epochs=ppo_epochs,
                                show_tools=show_tools)
    before = measure()
    if overwrite:
        clear_run(out)
    settings = {"stage": "agent_rl", "base": str(base), "loss": loss, "group_size": group_size,
                "ppo_epochs": ppo_epochs, "clip_eps": clip_eps, "eps_high": eps_high, "kl_coef": kl_coef,
                "max_turns": max_turns, "max_new_tokens": max_new_tokens, "temperature": temperature,
                "show_tools": show_tools, "n_prompts": len(prompts)}
    objective = AgentRLLoss(loss, reference, kl_coef, clip_eps, eps_high, temperature)
    trainer = Trainer(model, objective, source, train_cfg, tokenizer=tok,
                      extra_state=settings | {"rollouts": source.history}, **trainer_kwargs)
    t0 = time.perf_counter()
    result = trainer.fit()
    record = {**settings, "before": before, "after": measure(), "rollouts": source.history, "steps": result.steps,
              "train_s": result.elapsed_s, "wall_s": time.perf_counter() - t0, "heldout_prompts": len(heldout)}
    write_report(out, EVAL_FILE, record, default=nan_safe)
    return record
