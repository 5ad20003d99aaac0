"""Mixture of Experts: several FFNs ("experts") per layer, and a router that sends each token to a few.

As in MiniMind (and DeepSeek-MoE / Switch Transformer):

    probs   = softmax(router(x))                       (tokens, n_experts)
    w, idx  = top_k(probs, k)                           each token picks k experts
    w       = w / w.sum()          (norm_topk, k > 1)   their weights sum to 1 (top-1 keeps the raw
                                                        probability, so the task loss still trains the router)
    y       = sum_j w_j * expert_{idx_j}(x)  [+ shared_expert(x)]

Only k experts run per token, so a layer holds n_experts FFNs of parameters but computes k of them:
more parameters at the same FLOPs per token. Left alone, the router tends to send most tokens to a
few experts, which then learn fastest and attract even more tokens. The load-balancing loss
(Switch Transformer, eq. 4) counters that:

    aux = n_experts * sum_i f_i * P_i

f_i: share of the token-to-expert assignments that went to expert i; P_i: mean router probability
of expert i. It is 1 when both are uniform and grows as the load concentrates. It is multiplied by
``moe_aux_loss_coef`` and added to the training loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmlab.config import ModelConfig
from mmlab.model.ffn import make_ffn


class MoE(nn.Module):
    """x (B, T, C) -> (B, T, C). After a forward pass, ``aux_loss`` holds the (unscaled) balance
    loss and ``last_load`` the number of assignments each expert received (for plots)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_experts, self.top_k, self.norm_topk = cfg.n_experts, cfg.n_experts_per_tok, cfg.moe_norm_topk
        self.router = nn.Linear(cfg.hidden_size, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(make_ffn(cfg) for _ in range(cfg.n_experts))
        self.shared = nn.ModuleList(make_ffn(cfg) for _ in range(cfg.n_shared_experts))
        self.aux_loss: torch.Tensor | None = None
        self.last_load: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, C)
        probs = F.softmax(self.router(flat).float(), dim=-1)  # (N, E), float32 for a stable softmax
        weights, idx = probs.topk(self.top_k, dim=-1)  # (N, k)
        if self.norm_topk and self.top_k > 1:
            weights = weights / weights.sum(-1, keepdim=True)
        weights = weights.to(x.dtype)
        load = torch.bincount(idx.reshape(-1), minlength=self.n_experts)  # assignments per expert
        self.last_load = load.detach()
        f = load.to(probs.dtype) / idx.numel()
        self.aux_loss = self.n_experts * (f * probs.mean(0)).sum()
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(idx == e)  # which tokens chose expert e, and in which of their k slots
            if token.numel() == 0:
                continue
            y = expert(flat[token]) * weights[token, slot, None]
            out.index_add_(0, token, y)
        for expert in self.shared:
            out = out + expert(flat)
        return out.view(shape)

    def extra_repr(self) -> str:
        return f"experts={self.n_experts}, top_k={self.top_k}, shared={len(self.shared)}"
