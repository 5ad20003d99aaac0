"""AdamW (or SGD or Muon, for comparison) with weight decay on matrices only, and the learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from mmlab.train.config import TrainConfig
from mmlab.train.muon import MuonAdamW


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay 2-D+ tensors (matmul weights, embeddings); never norm gains or biases — shrinking a
    gain towards 0 is not regularisation, it just fights the normalisation."""
    params = [p for p in model.parameters() if p.requires_grad]  # unique: a tied matrix appears once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "muon":
        return build_muon(model, cfg)
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        # the pretraining lesson's baseline: one learning rate for every parameter, momentum, no
        # per-parameter scaling (what Adam adds)
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.beta1, nesterov=cfg.beta1 > 0, foreach=True)
    kwargs = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2)}
    # The fused kernel does the whole update in one pass per tensor (fewer, bigger kernels): it matters
    # for small models where per-step overhead dominates.
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


def build_muon(model: nn.Module, cfg: TrainConfig) -> MuonAdamW:
    """Muon for the 2-D matrices inside the blocks (attention and FFN projections); AdamW for the
    embedding, the output layer, the norm gains and LoRA's low-rank factors (decay on matrices only, as
    above)."""
    hidden, other_matrices, vectors = [], [], []
    for name, p in model.named_parameters():  # unique: a tied matrix appears once
        if not p.requires_grad:
            continue
        if p.dim() == 2 and name.startswith("blocks.") and ".lora_" not in name:
            hidden.append(p)
        else:
            (other_matrices if p.dim() >= 2 else vectors).append(p)
    groups = [{"params": hidden, "use_muon": True, "weight_decay": cfg.weight_decay},
              {"params": other_matrices, "weight_decay": cfg.weight_decay},
              {"params": vectors, "weight_decay": 0.0}]
    return MuonAdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                     momentum=cfg.muon_momentum)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then the schedule."""
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / (cfg.warmup_iters + 1)
    min_lr = cfg.resolved_min_lr
    if cfg.schedule == "constant":
        return cfg.lr
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if cfg.schedule == "wsd":  # warmup - stable - linear decay over the last decay_fraction of steps
        decay_start = int(decay_iters * (1 - cfg.decay_fraction))
        if step < decay_start:
            return cfg.lr
        frac = min(1.0, (step - decay_start) / max(1, decay_iters - decay_start))
        return cfg.lr + frac * (min_lr - cfg.lr)
    if step >= decay_iters:
        return min_lr
    progress = (step - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)
