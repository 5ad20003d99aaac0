"""GRPO: reinforcement learning from verifiable rewards, with group-normalised advantages.

For each prompt the current policy samples G completions. Each gets a reward from a checker (exact
answer on the synthetic tasks, plus a small format reward for ending the turn properly). Instead of a
learned value function (PPO's critic), the baseline is the group itself: a completion's advantage is
its reward minus the group's mean, divided by the group's standard deviation (Shao et al., 2024,
DeepSeekMath). The policy loss is PPO's clipped surrogate per token,

    -min( ratio * A, clip(ratio, 1 - eps, 1 + eps) * A ),   ratio = pi(token) / pi_old(token)

plus ``kl_coef`` times an estimate of KL(pi || ref) to the frozen starting model
(k3 = exp(ref - pi) - (ref - pi) - 1, always >= 0). The loss is averaged over all completion tokens of
the batch (the token-level variant of DAPO / Dr. GRPO; the paper averages per sequence, then per group).
Log-probabilities are taken at the sampling temperature. A rollout batch is reused for ``ppo_epochs``
optimizer steps. With ``ppo_epochs = 1`` the "old" log-probabilities are the current ones (ratio exactly
1, the clip inactive: plain policy gradient with a baseline). With more, they are recorded once per
rollout batch (under the same autocast dtype as training) and every step's ratio is measured against
them, so the clip bounds how far the repeated steps move; with dropout > 0 even the first ratio is not
exactly 1.

``RolloutSource`` is a BatchSource that samples from the live policy, so the one ``Trainer`` runs GRPO
like any other stage.
"""

from __future__ import annotations

import abc
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmlab.data.sft import Messages
from mmlab.data.synthetic import TaskItem, make_tasks
from mmlab.errors import ConfigError
from mmlab.model.lm import IGNORE_INDEX
from mmlab.tokenizer.base import Tokenizer
from mmlab.tokenizer.chat import IM_END, THINK_CLOSE, THINK_OPEN, encode_chat, parse_reply

EVAL_FILE = "grpo_eval.json"


@dataclass(frozen=True)
class RLPrompt:
    messages: Messages
    answer: str


def task_prompts(n: int, seed: int = 0, tasks: Sequence[str] | None = None) -> list[RLPrompt]:
    items: list[TaskItem] = make_tasks(n, seed=seed) if tasks is None else make_tasks(n, tuple(tasks), seed=seed)
    return [RLPrompt([{"role": "user", "content": t.prompt}], t.answer) for t in items]


def exact_reward(completion: str, answer: str, finished: bool, format_weight: float = 0.1) -> float:
    """1 for the exact answer (spaces trimmed), plus ``format_weight`` when the turn was ended with the
    end-of-turn token (a completion that runs on to the length limit gets no format reward)."""
    return float(completion.strip() == answer.strip()) + (format_weight if finished else 0.0)


def reply_answer(completion: str) -> str:
    """The answer of a completion: what follows its ``<think>`` block, if it has one, trimmed."""
    return parse_reply(completion, tools=False).content.strip()


def think_format_ok(completion: str, finished: bool) -> bool:
    """The reasoning format: one ``<think>`` block at the start with some reasoning in it, closed, then only
    the answer (one word: no spaces, no second block, no tags), and the turn ended with the end-of-turn token."""
    text = completion.lstrip("\n")
    if not finished or not text.startswith(THINK_OPEN) or text.count(THINK_OPEN) != 1 or text.count(THINK_CLOSE) != 1:
        return False
    reasoning, _, content = text[len(THINK_OPEN):].partition(THINK_CLOSE)
    return bool(reasoning.strip()) and len(content.split()) == 1 and "<" not in content


def think_reward(completion: str, answer: str, finished: bool, format_weight: float = 0.1) -> float:
    """1 for the exact answer after the think block (``reply_answer``), plus ``format_weight`` for the
    reasoning format (``think_format_ok``). The two are separate, as in DeepSeek-R1's rule-based rewards: an
    unclosed think block has no answer (0), a right answer without a think block earns 1 but not the format."""
    return float(reply_answer(completion) == answer.strip()) + (format_weight if think_format_ok(completion, finished)
                                                                else 0.0)


REWARDS: dict[str, Callable[[str, str, bool], float]] = {"exact": exact_reward, "think": think_reward}


def reasoning_prompts(n: int, seed: int = 0, steps: Sequence[int] = (1, 2, 3, 4)) -> list[RLPrompt]:
    """Multi-step arithmetic problems (``mmlab.data.reasoning``) as RL prompts: the prompts of ``reward="think"``."""
    from mmlab.data.reasoning import make_problems

    return [RLPrompt([{"role": "user", "content": p.prompt}], p.answer) for p in make_problems(n, steps, seed=seed)]


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """(P, G) rewards -> (P, G) advantages: per-group (r - mean) / (std + eps); a group whose completions
    all scored the same carries no signal (advantage 0)."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)


def pad_rows(rows: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token rows with 0 and their targets with IGNORE_INDEX to one width: (x, y), each (N, T)."""
    width = max(len(r) for r in rows)
    x = torch.zeros(len(rows), width, dtype=torch.long)
    y = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (r, t) in enumerate(zip(rows, targets, strict=True)):
        x[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        y[i, :len(t)] = torch.tensor(t, dtype=torch.long)
    return x, y


class ServedRollouts(abc.ABC):
    """What the trainer sees of an RL data source: ``sample`` draws ``rows`` prompts and returns a fresh
    ``rollout`` batch, served for ``ppo_epochs`` consecutive optimizer steps; ``slice_rows`` cuts a batch
    by prompts (``group_size`` rows each); there are no eval batches (held-out scoring is separate).
    Subclasses set ``prompts``, ``group_size``, ``ppo_epochs`` and define ``rollout``."""

    prompts: list
    group_size: int
    ppo_epochs: int
    _cached: Any = None
    _served: int = 0

    @abc.abstractmethod
    def rollout(self, prompts: Sequence[RLPrompt], generator: torch.Generator) -> tuple:
        """One fresh training batch from ``prompts`` (each subclass's own sampling and scoring)."""

    def sample(self, split: str, rows: int, generator: torch.Generator):
        if self._cached is None or self._served >= self.ppo_epochs:
            idx = torch.randint(len(self.prompts), (rows,), generator=generator).tolist()
            self._cached = self.rollout([self.prompts[i] for i in idx], generator)
            self._served = 0
        self._served += 1
        return self._cached

    def slice_rows(self, batch, start: int, stop: int):
        g = self.group_size
        return tuple(t[start * g:stop * g] for t in batch)

    def eval_batches(self, split: str):
        return []


class RolloutSource(ServedRollouts):
    """Samples prompts, generates ``group_size`` completions per prompt with the current policy, scores
    them, and returns a training batch ``(x, y, advantages, old_logprobs)``; each rollout batch is served
    for ``ppo_epochs`` consecutive optimizer steps. ``rows`` = prompts per micro-batch."""

    min_group_size = 2  # GRPO's baseline is the group; PPO (a critic's baseline) can sample one per prompt

    def __init__(self, model: torch.nn.Module, tok: Tokenizer, prompts: Sequence[RLPrompt], group_size: int = 8,
                 max_new_tokens: int = 16, temperature: float = 1.0, ppo_epochs: int = 1,
                 reward: Callable[[str, str, bool], float] = exact_reward, amp_dtype: torch.dtype | None = None):
        check_rollout_settings(group_size, temperature, max_new_tokens, ppo_epochs, self.min_group_size)
        if not prompts:
            raise ConfigError("no prompts")
        self.amp_dtype = amp_dtype
        self.model, self.tok, self.prompts = model, tok, list(prompts)
        self.group_size, self.max_new_tokens, self.temperature = group_size, max_new_tokens, temperature
        self.ppo_epochs, self.reward = ppo_epochs, reward
        self.stop = tok.token_to_id(IM_END)
        self.history: list[dict[str, float]] = []  # one record per rollout batch: reward, accuracy, length

    @torch.no_grad()
    def rollout(self, prompts: Sequence[RLPrompt], generator: torch.Generator) -> tuple:
        x, y, reward_t = self.sample_completions(prompts, generator)
        adv = group_advantages(reward_t).view(-1)
        old = torch.full(x.shape, float("nan"))  # nan: "use the current log-probs" (first use of a rollout)
        if self.ppo_epochs > 1:
            old = self.logprobs(x, y)
        return x, y, adv, old

    @torch.no_grad()
    def logprobs(self, x: torch.Tensor, y: torch.Tensor, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Log-probs of a rollout's tokens under ``model`` (default: the sampling policy) at the sampling
        temperature and the training autocast dtype: (B, T) on the CPU."""
        model = self.model if model is None else model
        device = next(model.parameters()).device
        with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            return token_logprobs(model, x.to(device), y.to(device), self.temperature).float().cpu()

    @torch.no_grad()
    def sample_completions(self, prompts: Sequence[RLPrompt], generator: torch.Generator) -> tuple:
        """``group_size`` completions per prompt, scored: ``(x, y, rewards)``, x and y (P * G, T) padded
        rows (y: the completion's tokens, IGNORE_INDEX elsewhere), rewards (P, G). Logs the batch in history."""
        from mmlab.infer.generate import generate

        model, g = self.model, self.group_size
        rows, targets, rewards, correct, lengths = [], [], [], [], []
        for p in prompts:
            ids, _ = encode_chat(self.tok, p.messages, add_generation_prompt=True)
            room = min(self.max_new_tokens, model.cfg.max_seq_len - len(ids))
            if room <= 0:
                raise ConfigError(f"a prompt of {len(ids)} tokens leaves no room to answer (max_seq_len "
                                  f"{model.cfg.max_seq_len}): {p.messages[-1]['content'][:60]!r}")
            seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
            outs = generate(model, [ids] * g, room, temperature=self.temperature, stop_tokens=[self.stop],
                            seed=seed)
            for new in outs:
                text = self.tok.decode(new)
                finished = len(new) < room  # stopped at <|im_end|> before the limit
                r = self.reward(text, p.answer, finished)
                seq = ids + new + ([self.stop] if finished else [])
                y = [IGNORE_INDEX] * (len(ids) - 1) + seq[len(ids):]  # targets: the completion's tokens only
                rows.append(seq[:-1])
                targets.append(y)
                rewards.append(r)
                correct.append(float(reply_answer(text) == p.answer.strip()))
                lengths.append(len(new))
        x, y = pad_rows(rows, targets)
        reward_t = torch.tensor(rewards).view(len(prompts), g)
        self.history.append({"reward": statistics.fmean(rewards), "accuracy": statistics.fmean(correct),
                             "length": statistics.fmean(lengths),
                             "signal": float((reward_t.std(dim=1, correction=0) > 0).float().mean())})
        return x, y, reward_t


def token_logprobs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log pi(y_t | x_<=t) per position at a sampling temperature (0 where y is IGNORE_INDEX): (B, T)."""
    logits = model(x).logits.float() / temperature
    logp = torch.gather(F.log_softmax(logits, dim=-1), 2, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logp * (y != IGNORE_INDEX)


class GRPOLoss:
    """Clipped surrogate with group advantages, plus a KL penalty to the frozen reference; summed over
    completion tokens (``count_tokens`` counts them, so the trainer's loss is a per-token mean)."""

    def __init__(self, reference: torch.nn.Module | None, kl_coef: float = 0.04, clip_eps: float = 0.2,
                 temperature: float = 1.0):
        check_loss_settings(kl_coef, clip_eps)
        if kl_coef > 0 and reference is None:
            raise ConfigError("kl_coef > 0 needs a reference model")
        self.reference, self.kl_coef, self.clip_eps, self.t = reference, kl_coef, clip_eps, temperature
        if reference is not None:
            reference.eval()
            for p in reference.parameters():
                p.requires_grad_(False)

    def __call__(self, model, batch):
        x, y, adv, old = batch
        mask = (y != IGNORE_INDEX).float()
        logp = token_logprobs(model, x, y, self.t)
        old = torch.where(torch.isnan(old), logp.detach(), old)  # first use of a rollout: ratio exactly 1
        per_token, clipped = self.policy_loss(logp, old, adv.unsqueeze(1))
        kl = torch.zeros((), device=x.device)
        if self.kl_coef > 0:
            with torch.no_grad():
                ref = token_logprobs(self.reference.to(x.device), x, y, self.t)
            diff = ref - logp
            k3 = torch.exp(diff) - diff - 1
            per_token = per_token + self.kl_coef * k3
            kl = (k3.detach() * mask).sum() / mask.sum().clamp(min=1)
        loss_sum = (per_token * mask).sum()
        return loss_sum, int(mask.sum()), {"kl": float(kl), "clip_fraction": float((clipped * mask).sum() /
                                                                                      mask.sum().clamp(min=1))}

    def policy_loss(self, logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-token policy loss (B, T) and the 0/1 mask of clipped tokens: PPO's clipped surrogate."""
        return clipped_policy_loss(logp, old, adv, self.clip_eps)

    def count_tokens(self, batch) -> int:
        return int((batch[1] != IGNORE_INDEX).sum())


def clipped_policy_loss(logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor,
                        clip_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, negated: -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) per token (B, T),
    and a (B, T) 0/1 mask of the tokens where the clip is what min() kept (no gradient). adv: (B, 1) or (B, T)."""
    ratio = torch.exp(logp - old)
    unclipped, clipped_obj = ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv
    return -torch.minimum(unclipped, clipped_obj), (clipped_obj < unclipped).float()


def check_rollout_settings(group_size: int, temperature: float, max_new_tokens: int, ppo_epochs: int,
                           min_group: int = 2) -> None:
    from mmlab.infer.generate import GREEDY_BELOW

    if group_size < min_group:
        raise ConfigError(f"group_size={group_size}: a group needs at least 2 completions to compare" if min_group == 2
                          else f"group_size={group_size} must be >= {min_group}")
    if not temperature > 0:
        raise ConfigError(f"temperature={temperature} must be > 0: at 0 every completion of a group is the same, "
                          "so every advantage is 0 and nothing is learned")
    if temperature < GREEDY_BELOW:
        raise ConfigError(f"temperature={temperature}: GRPO samples its completions, and below {GREEDY_BELOW:g} "
                          "sampling is greedy (every completion of a group the same, every advantage 0)")
    if max_new_tokens < 1 or ppo_epochs < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens} and ppo_epochs={ppo_epochs} must be >= 1")


def check_loss_settings(kl_coef: float, clip_eps: float) -> None:
    if not kl_coef >= 0 or not 0 < clip_eps < 1:
        raise ConfigError(f"kl_coef={kl_coef} must be >= 0 and clip_eps={clip_eps} in (0, 1)")


# ---- the stage -------------------------------------------------------------------------------
@dataclass
class RLRun:
    """What a reward-trained stage (GRPO, PPO) starts from: the policy loaded from the base checkpoint, its
    tokenizer, the frozen reference (None without a KL penalty), training prompts and held-out prompts."""

    base_ckpt: Path
    tok: Tokenizer
    device: torch.device
    model: Any
    reference: Any
    prompts: list[RLPrompt]
    heldout: list[RLPrompt]
    max_new_tokens: int

    def measure(self) -> dict[str, Any]:
        """Greedy held-out exact match (and answer loss, a few samples)."""
        from mmlab.train.sft import evaluate_sft

        convs = [[*p.messages, {"role": "assistant", "content": p.answer}] for p in self.heldout]
        r = evaluate_sft(self.model, self.tok, convs, self.model.cfg.max_seq_len, max_new_tokens=self.max_new_tokens)
        return {k: r[k] for k in ("exact_match", "answer_loss", "n_generated", "samples")}


def load_policy(base: str | Path, train_cfg: Any, *, kl_coef: float, ppo_epochs: int) -> tuple:
    """The RL stages' common start: ``(checkpoint, tokenizer, device, policy, reference)``; the policy and
    the frozen reference (None when ``kl_coef`` is 0) both load from ``base``, a chat checkpoint."""
    from mmlab.errors import MMLabError
    from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model, resolve_checkpoint
    from mmlab.train.sft import check_chat_tokenizer
    from mmlab.train.stages import stage_device

    if ppo_epochs > 1 and train_cfg.grad_accum > 1:
        raise MMLabError("--ppo-epochs > 1 reuses a rollout batch over optimizer steps; with --grad-accum > 1 "
                         "the same rollout would fill several micro-batches of one step (use one of the two)")
    base_ckpt = resolve_checkpoint(base)
    tok = load_checkpoint_tokenizer(base_ckpt)
    check_chat_tokenizer(tok, str(base))
    device = stage_device(train_cfg)
    model = load_model(base_ckpt, device=device)
    reference = load_model(base_ckpt, device=device) if kl_coef > 0 else None
    return base_ckpt, tok, device, model, reference


def load_rl_run(base: str | Path, train_cfg: Any, *, kl_coef: float, ppo_epochs: int, max_new_tokens: int,
                n_prompts: int, n_heldout: int, tasks: Sequence[str] | None) -> RLRun:
    from mmlab.data.synthetic import TASKS

    unknown = sorted(set(tasks or ()) - set(TASKS))
    if unknown or (tasks is not None and not tasks):
        raise ConfigError(f"tasks {unknown or tasks!r}: choose from {', '.join(TASKS)}")
    base_ckpt, tok, device, model, reference = load_policy(base, train_cfg, kl_coef=kl_coef, ppo_epochs=ppo_epochs)
    prompts = task_prompts(n_prompts, seed=train_cfg.seed, tasks=tasks)
    # held out: other seeds' items, minus any prompt that also appears in training
    seen = {p.messages[0]["content"] for p in prompts}
    heldout = [p for p in task_prompts(4 * n_heldout, seed=train_cfg.seed + 10_000, tasks=tasks)
               if p.messages[0]["content"] not in seen][:n_heldout]
    return RLRun(base_ckpt, tok, device, model, reference, prompts, heldout, max_new_tokens)


def fit_and_record(trainer: Any, source: RolloutSource, run: RLRun, before: dict[str, Any],
                   resume: bool) -> dict[str, Any]:
    """Train, then measure again: the stage's report (settings, before/after, the reward curve, timings)."""
    import time

    if resume:  # the saved state holds the earlier rollouts and the "before" numbers: continue them
        source.history = trainer.extra_state.setdefault("rollouts", [])
        before = trainer.extra_state.get("before", {})
    t0 = time.perf_counter()
    result = trainer.fit()
    settings = {k: v for k, v in trainer.extra_state.items() if k not in ("before", "rollouts")}
    return {**settings, "before": before, "after": run.measure(), "rollouts": source.history,
            "steps": result.steps, "train_s": result.elapsed_s, "wall_s": time.perf_counter() - t0,
            "heldout_prompts": len(run.heldout)}


def grpo(base: str | Path | None, train_cfg: Any, *, group_size: int = 8, kl_coef: float = 0.04,
         clip_eps: float = 0.2, ppo_epochs: int = 1, max_new_tokens: int = 12, temperature: float = 1.0,
         n_prompts: int = 2000, n_heldout: int = 200, tasks: Sequence[str] | None = None, resume: bool = False,
         overwrite: bool = False, reward: str = "exact", **trainer_kwargs: Any) -> dict[str, Any]:
    """RL-tune the checkpoint ``base`` (an SFT or DPO model) on the synthetic verifiable tasks; held-out
    exact-match accuracy before and after, and the reward curve, go to ``grpo_eval.json``. ``reward``:
    "exact" (``exact_reward`` on the tasks) or "think" (``think_reward`` on multi-step arithmetic problems,
    ``reasoning_prompts``, for a model that reasons in a think block; ``tasks`` must then be None)."""
    from mmlab.errors import MMLabError
    from mmlab.train.pretrain import clear_run
    from mmlab.train.stages import refuse_existing_run, saved_stage, write_report
    from mmlab.train.trainer import Trainer

    out = Path(train_cfg.out_dir)
    refuse_existing_run(out, resume, overwrite)
    if resume:
        saved = saved_stage(out, "grpo")
        base = saved["base"]
        group_size, kl_coef, clip_eps, ppo_epochs, max_new_tokens, temperature, n_prompts, n_heldout, tasks = (
            saved[k] for k in ("group_size", "kl_coef", "clip_eps", "ppo_epochs", "max_new_tokens", "temperature",
                               "n_prompts", "n_heldout", "tasks"))
        reward = saved.get("reward", "exact")
    if base is None:
        raise MMLabError("GRPO needs a base checkpoint")
    if reward not in REWARDS or (reward == "think" and tasks):
        raise ConfigError(f"reward={reward!r}: choose from {', '.join(REWARDS)} (\"think\" brings its own "
                          "problems: leave out tasks)")
    check_rollout_settings(group_size, temperature, max_new_tokens, ppo_epochs)
    check_loss_settings(kl_coef, clip_eps)
    run = load_rl_run(base, train_cfg, kl_coef=kl_coef, ppo_epochs=ppo_epochs, max_new_tokens=max_new_tokens,
                      n_prompts=n_prompts, n_heldout=n_heldout, tasks=tasks)
    if reward == "think":  # multi-step problems; held out: another seed's, minus any prompt trained on
        run.prompts = reasoning_prompts(n_prompts, seed=train_cfg.seed)
        seen = {p.messages[0]["content"] for p in run.prompts}
        run.heldout = [p for p in reasoning_prompts(4 * n_heldout, seed=train_cfg.seed + 10_000)
                       if p.messages[0]["content"] not in seen][:n_heldout]
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(train_cfg.dtype)
    source = RolloutSource(run.model, run.tok, run.prompts, group_size=group_size, max_new_tokens=max_new_tokens,
                           temperature=temperature, ppo_epochs=ppo_epochs, reward=REWARDS[reward], amp_dtype=amp)
    before = {} if resume else run.measure()
    if overwrite and not resume:
        clear_run(out)
    extra_state = {"stage": "grpo", "base": str(base), "group_size": group_size, "kl_coef": kl_coef,
                   "clip_eps": clip_eps, "ppo_epochs": ppo_epochs, "max_new_tokens": max_new_tokens,
                   "temperature": temperature, "n_prompts": n_prompts, "n_heldout": n_heldout,
                   "tasks": list(tasks) if tasks else None, "reward": reward, "before": before,
                   "rollouts": source.history}
    trainer = Trainer(run.model, GRPOLoss(run.reference, kl_coef, clip_eps, temperature), source, train_cfg,
                      tokenizer=run.tok, resume=resume, extra_state=extra_state, **trainer_kwargs)
    record = fit_and_record(trainer, source, run, before, resume)
    write_report(out, EVAL_FILE, record, default=nan_safe)
    return record


def nan_safe(value: Any) -> Any:
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value
