"""Multi-head latent attention (MLA; DeepSeek-V2, 2024, and DeepSeek-V3): the KV cache holds a small latent.

GQA shrinks the cache by sharing keys and values between heads. MLA instead compresses them: every
token writes one latent vector c (``mla_kv_rank`` numbers) from which each head's key and value are
expanded, and the cache stores c alone. RoPE does not commute with that expansion (a rotation depends on
the position, the up-projection does not), so MLA "decouples" position: each query head gets
``mla_rope_dim`` extra dimensions that are rotated, and they meet one shared rotated key per token (as in
MQA), which is cached beside the latent:

    c      = RMSNorm(W_dkv x)                         (B, T, r)        cached
    k_rope = RoPE(W_kr x)                             (B, 1, T, d_r)   cached, shared by every head
    k_h    = [W_uk,h c ; k_rope]    v_h = W_uv,h c    per head: head_dim + d_r, and head_dim
    q_h    = [q_nope,h ; RoPE(q_rope,h)]              from one projection of x
    out    = softmax(q_h k_h^T / sqrt(head_dim + d_r)) v_h

Cache per token and layer: r + d_r numbers, against 2 * n_kv_heads * head_dim for GQA (``mmlab model
summary`` prints both). This module expands the cached latents at every step, which is simple and exact;
DeepSeek's inference kernels instead fold W_uk into the query and W_uv into the output projection
("absorption") so that attention runs on the latent directly.
"""

from __future__ import annotations

import torch
from torch import nn

from mmlab.config import ModelConfig
from mmlab.model.attention import attend
from mmlab.model.kv_cache import KVCache
from mmlab.model.norm import RMSNorm
from mmlab.model.rope import apply_rope


class LatentAttention(nn.Module):
    """x (B, T, C) -> (B, T, C), caching (latent, rope key) per token. The rope tables passed in have
    ``mla_rope_dim`` columns (the model builds them so when ``attention="mla"``)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.rank, self.rope_dim = cfg.mla_kv_rank, cfg.mla_rope_dim
        self.causal, self.impl, self.dropout = cfg.causal, cfg.attn_impl, cfg.resolved_attn_dropout
        H, D, R = cfg.n_heads, cfg.head_dim, cfg.mla_rope_dim
        self.q_proj = nn.Linear(cfg.hidden_size, H * (D + R), bias=cfg.bias)
        self.kv_down = nn.Linear(cfg.hidden_size, self.rank + R, bias=cfg.bias)  # latent and rope key at once
        self.kv_norm = RMSNorm(self.rank, cfg.norm_eps, cfg.fused_ops)
        self.kv_up = nn.Linear(self.rank, H * 2 * D, bias=False)  # per head: key content, value
        self.o_proj = nn.Linear(H * D, cfg.hidden_size, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.window = cfg.layer_window(layer_idx)
        self.sinks = nn.Parameter(torch.zeros(cfg.n_heads)) if cfg.attn_sinks else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        bias: torch.Tensor | None = None,
        cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, _ = x.shape
        H, D, R = self.n_heads, self.head_dim, self.rope_dim
        q = self.q_proj(x).view(B, T, H, D + R).transpose(1, 2)  # (B, H, T, D + R)
        q_nope, q_rope = q.split([D, R], dim=-1)
        latent, k_rope = self.kv_down(x).split([self.rank, R], dim=-1)
        latent = self.kv_norm(latent).unsqueeze(1)  # (B, 1, T, r)
        k_rope = k_rope.unsqueeze(1)  # (B, 1, T, R): one rotated key per token, shared by the heads
        if rope is not None:
            q_rope, k_rope = apply_rope(q_rope, *rope), apply_rope(k_rope, *rope)
        if cache is not None:  # the cache holds the latent in the "keys" and the rope key in the "values"
            latent, k_rope = cache.update(self.layer_idx, latent, k_rope)
        Tk = latent.shape[2]
        kv = self.kv_up(latent.squeeze(1)).view(B, Tk, H, 2 * D).transpose(1, 2)  # (B, H, Tk, 2D)
        k_nope, v = kv.split([D, D], dim=-1)
        k = torch.cat([k_nope, k_rope.expand(B, H, Tk, R)], dim=-1)
        q = torch.cat([q_nope, q_rope], dim=-1)
        dropout_p = self.dropout if self.training else 0.0
        out, weights = attend(q, k, v, n_rep=1, bias=bias, causal=self.causal, dropout_p=dropout_p,
                              explicit=self.impl == "explicit" or need_weights, window=self.window, sinks=self.sinks)
        out = out.transpose(1, 2).reshape(B, T, H * D)
        return self.resid_dropout(self.o_proj(out)), weights
