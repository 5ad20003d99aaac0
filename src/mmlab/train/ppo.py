"""PPO with a critic: reinforcement learning from the same verifiable rewards as GRPO, with a learned baseline.

Each completion is an episode: the state s_t is the prompt plus the tokens sampled so far, the action a_t
the next token. The rewards per token follow InstructGPT (Ouyang et al., 2022) and TRL's PPOTrainer: every
completion token pays a KL penalty to the frozen reference, and the checker's score R (exact answer plus
format, as for GRPO) arrives at the last token,

    r_t = -kl_coef * (log pi_old(a_t | s_t) - log ref(a_t | s_t))  +  [t = last] * R

(the per-token log-ratio, k1; summed over a completion it estimates that sequence's KL(pi || ref)). So the
KL sits in the reward, not in the loss as GRPO adds it. A critic V(s_t) predicts the return to come. With
the one-step error delta_t = r_t + gamma * V(s_{t+1}) - V(s_t) (V after the last token is 0), generalized
advantage estimation (Schulman et al., 2016) is

    A_t = delta_t + gamma * lam * A_{t+1}        returns (the value targets)  G_t = A_t + V(s_t)

lam = 1 gives the Monte-Carlo return minus the baseline (unbiased, noisy); lam = 0 the one-step error
(quiet, but as wrong as V is). The advantages are whitened over the batch's completion tokens, and the
loss per completion token is

    -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)  +  vf_coef * 0.5 * max((V - G)^2, (V_clip - G)^2)

with V_clip = V_old + clip(V - V_old, -cliprange_value, cliprange_value): like the ratio clip, the value
clip keeps repeated steps on one rollout batch (``ppo_epochs``) near the values that batch was scored with,
and max() keeps the more pessimistic of the two errors. The log-probabilities pi_old and values V_old are
recorded once per rollout batch; with ppo_epochs = 1 (and no dropout) both clips are inactive.

GRPO needs none of the critic: its baseline is the mean of G completions of the same prompt, and every token
of a completion shares one advantage. PPO's critic gives each token its own baseline (credit assignment
inside a completion), and can learn from one completion per prompt, at the cost of a second network.

The critic here is a **separate model**, initialised from the base checkpoint with its LM head swapped for a
zero-initialised scalar head (V starts at 0, so the first advantages are the returns themselves). Why not a
value head on the policy's own trunk: (1) the value loss then cannot pull the policy's weights (with a shared
trunk, vf_coef trades the two losses inside the same weights; InstructGPT used a separate value model too);
(2) the cost GRPO removes is exactly this model (its weights, gradients and AdamW moments, a forward and a
backward per step), so a comparison measures it; (3) checkpoints stay plain policies that every other
command loads: the critic lives in the checkpoint's trainer state only. A consequence: vf_coef scales only
the critic's gradient, which AdamW's per-parameter normalisation mostly undoes, so it matters much less here
than with a shared trunk (through the critic's gradient clipping and AdamW's eps); it is kept for parity
with the usual recipe and reported in the loss.

``PPORolloutSource`` reuses GRPO's sampling and scoring and adds the critic's values and GAE;
``PPOTrainer`` is the one Trainer plus the critic's own AdamW step (after the policy's, at its learning
rate and gradient clip) and the critic's state in the checkpoint, so ``--resume`` continues both.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmlab.errors import ConfigError, MMLabError
from mmlab.model.lm import IGNORE_INDEX, MiniMindLM
from mmlab.train.grpo import (
    RolloutSource,
    check_loss_settings,
    check_rollout_settings,
    clipped_policy_loss,
    fit_and_record,
    load_rl_run,
    token_logprobs,
)
from mmlab.train.trainer import Trainer

EVAL_FILE = "ppo_eval.json"


class ValueModel(nn.Module):
    """V(s_t) for every position: a MiniMindLM trunk whose LM head is replaced by a scalar head.
    x: (B, T) token ids -> (B, T) values (float32)."""

    def __init__(self, trunk: MiniMindLM):
        super().__init__()
        trunk.lm_head = nn.Identity()  # the trunk's "logits" are now its final normed hidden states (B, T, C)
        self.trunk = trunk
        self.head = nn.Linear(trunk.cfg.hidden_size, 1)
        nn.init.zeros_(self.head.weight)  # V = 0 at the start: no made-up baseline before any reward is seen
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x).logits).squeeze(-1).float()


# ---- the math: pure functions ---------------------------------------------------------------
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over (B, T) rewards and values; mask (B, T) is 1 on the steps of an
    episode (a row's completion tokens) and 0 elsewhere (prompt, padding). A masked step ends the episode
    before it (the value after an episode's last step is 0) and gets advantage and return 0.
    Returns (advantages, returns), both (B, T), returns = advantages + values on the episode's steps."""
    mask = mask.float()
    next_mask = F.pad(mask[:, 1:], (0, 1))  # does step t + 1 belong to the episode?
    next_values = F.pad(values[:, 1:], (0, 1)) * next_mask
    deltas = rewards + gamma * next_values - values
    advantages = torch.zeros_like(deltas)
    running = torch.zeros_like(deltas[:, 0])
    for t in reversed(range(deltas.shape[1])):  # A_t = delta_t + gamma * lam * A_{t+1}, from the end back
        running = (deltas[:, t] + gamma * lam * next_mask[:, t] * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (0 elsewhere): one scale of advantages for every batch."""
    mask = mask.float()
    n = mask.sum().clamp(min=1)
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / n
    return (x - mean) * torch.rsqrt(var + eps) * mask


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               cliprange: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped value loss per step, 0.5 * max((V - G)^2, (V_clip - G)^2) with V_clip = V_old +
    clip(V - V_old, -cliprange, cliprange), and a 0/1 mask of the steps where the clipped error is the larger
    (there V has moved more than ``cliprange`` from V_old in a direction the clip cuts short: no gradient)."""
    clipped_values = old_values + (values - old_values).clamp(-cliprange, cliprange)
    unclipped, clipped = (values - returns) ** 2, (clipped_values - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped), (clipped > unclipped).float()


# ---- rollouts, loss, trainer ----------------------------------------------------------------
class PPORolloutSource(RolloutSource):
    """GRPO's rollouts (same prompts, sampling and rewards), scored per token: the batch is
    ``(x, y, old_logprobs, old_values, advantages, returns)``, each (rows, T)."""

    min_group_size = 1  # the critic is the baseline: one completion per prompt is enough

    def __init__(self, model: nn.Module, tok: Any, prompts: Sequence[Any], critic: ValueModel,
                 reference: nn.Module | None, *, kl_coef: float = 0.04, gamma: float = 1.0, lam: float = 0.95,
                 **rollout_kwargs: Any):
        super().__init__(model, tok, prompts, **rollout_kwargs)
        if kl_coef > 0 and reference is None:
            raise ConfigError("kl_coef > 0 needs a reference model")
        self.critic, self.reference = critic, reference
        self.kl_coef, self.gamma, self.lam = kl_coef, gamma, lam

    @torch.no_grad()
    def rollout(self, prompts, generator):
        x, y, scores = self.sample_completions(prompts, generator)
        mask = (y != IGNORE_INDEX).float()
        old = self.logprobs(x, y)
        kl = (old - self.logprobs(x, y, self.reference)) * mask if self.kl_coef > 0 else torch.zeros_like(old)
        device = next(self.critic.parameters()).device
        with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            values = self.critic(x.to(device)).float().cpu() * mask
        rewards = -self.kl_coef * kl
        last = mask.cumsum(1).argmax(1)  # each row's last completion token (where the running count peaks first)
        rewards[torch.arange(len(x)), last] += scores.view(-1)
        advantages, returns = gae(rewards, values, mask, self.gamma, self.lam)
        n = mask.sum().clamp(min=1)
        self.history[-1].update(kl=float(kl.sum() / len(x)),  # per completion: the sequence's KL estimate
                                value=float(values.sum() / n))
        return x, y, old, values, whiten(advantages, mask), returns


class PPOLoss:
    """Clipped policy loss on whitened GAE advantages plus vf_coef times the clipped value loss, summed over
    completion tokens (the trainer divides by ``count_tokens``). The KL is already in the rewards."""

    def __init__(self, critic: ValueModel, clip_eps: float = 0.2, vf_coef: float = 0.1,
                 cliprange_value: float = 0.2, temperature: float = 1.0):
        check_loss_settings(0.0, clip_eps)
        check_ppo_settings(vf_coef=vf_coef, cliprange_value=cliprange_value)
        self.critic, self.clip_eps, self.vf_coef, self.cliprange_value, self.t = (
            critic, clip_eps, vf_coef, cliprange_value, temperature)

    def __call__(self, model, batch):
        x, y, old, old_values, advantages, returns = batch
        mask = (y != IGNORE_INDEX).float()
        n = mask.sum().clamp(min=1)
        logp = token_logprobs(model, x, y, self.t)
        policy, clipped = clipped_policy_loss(logp, old, advantages, self.clip_eps)
        value, value_clipped = value_loss(self.critic(x), old_values, returns, self.cliprange_value)
        loss_sum = ((policy + self.vf_coef * value) * mask).sum()

        def mean(t: torch.Tensor) -> float:
            return float((t.detach() * mask).sum() / n)

        return loss_sum, int(mask.sum()), {"policy_loss": mean(policy), "value_loss": mean(value),
                                           "clip_fraction": mean(clipped), "value_clip_fraction": mean(value_clipped),
                                           "approx_kl_old": mean(old - logp)}

    def count_tokens(self, batch) -> int:
        return int((batch[1] != IGNORE_INDEX).sum())


class PPOTrainer(Trainer):
    """The one training loop, plus the critic. The loss holds both terms, so one backward gives the critic
    its gradients too; after the policy's optimizer step the critic takes its own AdamW step (same learning
    rate and gradient clip). Its weights and optimizer state ride in the trainer state of each checkpoint."""

    def __init__(self, model: MiniMindLM, objective: PPOLoss, data: PPORolloutSource, cfg: Any,
                 critic: ValueModel, **kwargs: Any):
        from mmlab.train.checkpoint import load_trainer_state
        from mmlab.train.optim import build_optimizer

        refuse_fp16(cfg.dtype)
        super().__init__(model, objective, data, cfg, **kwargs)
        if self.dist.enabled:
            raise MMLabError("PPO runs in one process: the critic is not wrapped in DistributedDataParallel")
        self.critic = critic.to(self.device).train()
        self.critic_optimizer = build_optimizer(self.critic, cfg)
        if kwargs.get("resume"):
            saved = load_trainer_state(self.ckpt_path).get("critic")
            if saved is None:
                raise MMLabError(f"cannot resume {self.out}: its checkpoint holds no critic (not a PPO run)")
            self.critic.load_state_dict(saved["model"])
            self.critic_optimizer.load_state_dict(saved["optimizer"])

    def _train_step(self) -> tuple[float, float, int]:
        result = super()._train_step()  # the policy's step; the critic's gradients are waiting
        for group in self.critic_optimizer.param_groups:
            group["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.critic.parameters(), self.cfg.grad_clip)
        self.critic_optimizer.step()
        self.critic_optimizer.zero_grad(set_to_none=True)
        return result

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(),
                "critic": {"model": self.critic.state_dict(), "optimizer": self.critic_optimizer.state_dict()}}


# ---- settings and memory --------------------------------------------------------------------
def check_ppo_settings(*, gamma: float = 1.0, lam: float = 0.95, vf_coef: float = 0.1,
                       cliprange_value: float = 0.2) -> None:
    if not 0 < gamma <= 1 or not 0 <= lam <= 1:
        raise ConfigError(f"gamma={gamma} must be in (0, 1] and lam={lam} in [0, 1]")
    if not vf_coef > 0 or not cliprange_value > 0:
        raise ConfigError(f"vf_coef={vf_coef} and cliprange_value={cliprange_value} must be > 0")


def refuse_fp16(dtype: str) -> None:
    if dtype == "fp16":  # the loss scaler unscales the policy's gradients, not the critic's
        raise ConfigError("PPO trains with --dtype fp32 or bf16 (fp16's loss scaling would not cover the critic)")


def model_state_bytes(trainable: Sequence[nn.Module], frozen: Sequence[nn.Module] = ()) -> int:
    """Bytes of weights, gradients and AdamW's two moments (4x the parameter bytes) of the trained models,
    plus the weights of the frozen ones: the training state that does not depend on the batch."""
    def size(m: nn.Module) -> int:
        return sum(p.numel() * p.element_size() for p in m.parameters())

    return sum(4 * size(m) for m in trainable) + sum(size(m) for m in frozen)


def peak_memory(device: torch.device) -> dict[str, float]:
    """This process's peak resident memory so far (MiB; loading and evaluation included), and the CUDA
    allocator's peak on a GPU."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out = {"peak_rss_mib": rss / 2**20 if sys.platform == "darwin" else rss / 2**10}
    if device.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


# ---- the stage -------------------------------------------------------------------------------
def ppo(base: str | Path | None, train_cfg: Any, *, group_size: int = 8, kl_coef: float = 0.04,
        clip_eps: float = 0.2, ppo_epochs: int = 4, max_new_tokens: int = 12, temperature: float = 1.0,
        gamma: float = 1.0, lam: float = 0.95, vf_coef: float = 0.1, cliprange_value: float = 0.2,
        n_prompts: int = 2000, n_heldout: int = 200, tasks: Sequence[str] | None = None, resume: bool = False,
        overwrite: bool = False, **trainer_kwargs: Any) -> dict[str, Any]:
    """PPO-tune the checkpoint ``base`` (an SFT or DPO model) on the synthetic verifiable tasks, with a critic
    initialised from the same checkpoint; held-out exact match before and after, the reward curve, wall time
    and memory go to ``ppo_eval.json``."""
    from mmlab.train.checkpoint import load_model
    from mmlab.train.grpo import nan_safe
    from mmlab.train.pretrain import clear_run
    from mmlab.train.stages import refuse_existing_run, saved_stage, write_report

    out = Path(train_cfg.out_dir)
    refuse_existing_run(out, resume, overwrite)
    names = ("group_size", "kl_coef", "clip_eps", "ppo_epochs", "max_new_tokens", "temperature", "gamma", "lam",
             "vf_coef", "cliprange_value", "n_prompts", "n_heldout", "tasks")
    if resume:
        saved = saved_stage(out, "ppo")
        base = saved["base"]
        (group_size, kl_coef, clip_eps, ppo_epochs, max_new_tokens, temperature, gamma, lam, vf_coef,
         cliprange_value, n_prompts, n_heldout, tasks) = (saved[k] for k in names)
    if base is None:
        raise MMLabError("PPO needs a base checkpoint")
    check_rollout_settings(group_size, temperature, max_new_tokens, ppo_epochs, PPORolloutSource.min_group_size)
    check_loss_settings(kl_coef, clip_eps)
    check_ppo_settings(gamma=gamma, lam=lam, vf_coef=vf_coef, cliprange_value=cliprange_value)
    refuse_fp16(train_cfg.dtype)
    run = load_rl_run(base, train_cfg, kl_coef=kl_coef, ppo_epochs=ppo_epochs, max_new_tokens=max_new_tokens,
                      n_prompts=n_prompts, n_heldout=n_heldout, tasks=tasks)
    critic = ValueModel(load_model(run.base_ckpt, device=run.device))
    amp = {"bf16": torch.bfloat16}.get(train_cfg.dtype)
    source = PPORolloutSource(run.model, run.tok, run.prompts, critic, run.reference, kl_coef=kl_coef, gamma=gamma,
                              lam=lam, group_size=group_size, max_new_tokens=max_new_tokens, temperature=temperature,
                              ppo_epochs=ppo_epochs, amp_dtype=amp)
    before = {} if resume else run.measure()
    if overwrite and not resume:
        clear_run(out)
    settings = dict(zip(names, (group_size, kl_coef, clip_eps, ppo_epochs, max_new_tokens, temperature, gamma, lam,
                                vf_coef, cliprange_value, n_prompts, n_heldout, list(tasks) if tasks else None),
                        strict=True))
    extra_state = {"stage": "ppo", "base": str(base), **settings, "before": before, "rollouts": source.history}
    objective = PPOLoss(critic, clip_eps, vf_coef, cliprange_value, temperature)
    trainer = PPOTrainer(run.model, objective, source, train_cfg, critic, tokenizer=run.tok, resume=resume,
                         extra_state=extra_state, **trainer_kwargs)
    record = fit_and_record(trainer, source, run, before, resume)
    frozen = [run.reference] if run.reference is not None else []
    record["memory"] = {**peak_memory(run.device),
                        "model_state_mib": model_state_bytes([run.model, critic], frozen) / 2**20,
                        "critic_params": sum(p.numel() for p in critic.parameters())}
    write_report(out, EVAL_FILE, record, default=nan_safe)
    return record
