"""Multi-head causal self-attention with grouped-query KV heads (MHA / GQA / MQA).

Two paths give the same output (tested):
  * ``sdpa``: torch.nn.functional.scaled_dot_product_attention (fused kernels, flash on CUDA);
  * ``explicit``: softmax(Q K^T / sqrt(d) + mask) V written out, which can also return the
    attention weights for plots.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmlab.config import ModelConfig
from mmlab.model.kv_cache import KVCache
from mmlab.model.norm import RMSNorm
from mmlab.model.rope import apply_rope


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, H_kv, T, D) -> (B, H_kv * n_rep, T, D): each KV head serves n_rep query heads (GQA)."""
    if n_rep == 1:
        return x
    B, H, T, D = x.shape
    return x[:, :, None].expand(B, H, n_rep, T, D).reshape(B, H * n_rep, T, D)


def causal_mask(n_q: int, n_k: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (n_q, n_k), True where query i may see key j. The queries are the *last* n_q
    positions of the n_k keys (which is what decoding with a KV cache needs)."""
    offset = n_k - n_q
    q_pos = torch.arange(n_q, device=device)[:, None] + offset
    return torch.arange(n_k, device=device)[None, :] <= q_pos


def explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    causal: bool = True,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention by hand. q: (B, H, Tq, D); k, v: (B, H, Tk, D); bias: additive, broadcast to
    (B, H, Tq, Tk). Returns the output (B, H, Tq, D) and the weights (B, H, Tq, Tk), taken before
    dropout (so each row is a probability distribution even in training mode)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # scale keeps the softmax from saturating
    if bias is not None:
        scores = scores + bias
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[2], k.shape[2], q.device), float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    return dropped @ v, weights


class Attention(nn.Module):
    """x (B, T, C) -> (B, T, C). Query heads: n_heads; key/value heads: n_kv_heads."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.causal, self.impl, self.dropout = cfg.causal, cfg.attn_impl, cfg.resolved_attn_dropout
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.n_heads * cfg.head_dim, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.kv_heads * cfg.head_dim, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.kv_heads * cfg.head_dim, bias=cfg.bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.hidden_size, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        # QK-norm (Qwen3, OLMo 2, Gemma 3): each head's query and key get unit RMS (times a learned gain per
        # dimension, shared by the heads), so the logits q.k / sqrt(d) cannot grow with the weights' scale
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        bias: torch.Tensor | None = None,
        cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """rope: (cos, sin) for the positions of x; bias: additive score bias (ALiBi);
        cache: past keys/values (decoding). Returns (output, weights or None)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:  # over head_dim, before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, D), (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        n_rep = self.n_heads // self.n_kv_heads
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if self.impl == "explicit" or need_weights:
            out, weights = explicit_attention(
                q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), bias, self.causal, dropout_p
            )
        else:
            out = _sdpa(q, k, v, bias, self.causal, dropout_p, n_rep)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.resid_dropout(self.o_proj(out)), weights


# torch >= 2.5 lets SDPA read grouped K/V directly; repeat_kv would copy them n_rep times first
# (modules/01-foundation/03-attention exp5_gqa measures the difference on whole decode steps).
_SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


def _sdpa(q, k, v, bias, causal, dropout_p, n_rep):
    Tq, Tk = q.shape[2], k.shape[2]
    gqa = {}
    if n_rep > 1:
        if _SDPA_GQA:
            gqa = {"enable_gqa": True}
        else:
            k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    if bias is None and (not causal or Tq == Tk or Tq == 1):
        # fast path: no mask tensor. Square causal -> the kernel builds the mask itself; a single
        # query at the newest position may see every cached key.
        is_causal = causal and Tq == Tk and Tq > 1
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, dropout_p=dropout_p, **gqa)
    mask = bias
    if causal:  # decoding with a cache: queries are the last Tq of Tk positions
        allowed = causal_mask(Tq, Tk, q.device)
        neg_inf = torch.zeros(Tq, Tk, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
        mask = neg_inf if mask is None else mask.to(q.dtype) + neg_inf
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), dropout_p=dropout_p, **gqa)
