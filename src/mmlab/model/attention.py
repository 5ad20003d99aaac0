"""Multi-head causal self-attention with grouped-query KV heads (MHA / GQA / MQA).

Two paths give the same output (tested):
  * ``sdpa``: torch.nn.functional.scaled_dot_product_attention (fused kernels, flash on CUDA);
  * ``explicit``: softmax(Q K^T / sqrt(d) + mask) V written out, which can also return the
    attention weights for plots.

Three switches of 2024-2026 models (``attend`` applies them, for this module and for ``mla.py``):
  * ``qk_norm`` (Qwen3, OLMo 2, Gemma 3): RMSNorm on each query and key head before RoPE;
  * ``sliding_window`` (Mistral, Gemma 3, gpt-oss): a query sees only the last ``window`` positions, so
    a windowed layer's cache stops growing at the window (``KVCache``);
  * ``attn_sinks`` (gpt-oss): one learned logit per head joins every softmax as a key with no value, so a
    head can put its mass "nowhere" instead of on the first tokens (StreamingLLM's observation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmlab.config import ModelConfig
from mmlab.model.fused import rope_qk
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


def window_bias(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None, dtype: torch.dtype) -> torch.Tensor:
    """Additive (Tq, Tk) mask: 0 where query position i may see key position j (j <= i, and i - j < window),
    -inf elsewhere."""
    allowed = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        allowed &= q_pos[:, None] - k_pos[None, :] < window
    return torch.zeros(allowed.shape, dtype=dtype, device=q_pos.device).masked_fill(~allowed, float("-inf"))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, n_rep: int, bias: torch.Tensor | None, causal: bool,
           dropout_p: float, explicit: bool, window: int | None = None, sinks: torch.Tensor | None = None,
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(q k^T / sqrt(d) + bias + masks) v. q: (B, H, Tq, D); k: (B, H/n_rep, Tk, D); v: (B, H/n_rep, Tk,
    Dv). The queries are the last Tq of the Tk positions the keys cover (decoding with a cache). ``window``:
    the sliding window; ``sinks``: (H,) logits of a key that has no value. Returns (out, weights or None);
    weights (only with ``explicit``) leave out the sink, so a row sums to 1 minus the sink's share."""
    Tq, Tk = q.shape[2], k.shape[2]
    if window is not None or sinks is not None:  # one explicit mask holds causality, the window and the sink
        start = Tk - Tq
        pos = torch.arange(Tk, device=q.device)
        mask = window_bias(pos[start:], pos, window, q.dtype) if causal else None
        bias = mask if bias is None else (bias.to(q.dtype) if mask is None else bias.to(q.dtype) + mask)
        causal = False
        if sinks is not None:  # a zero key (score 0) and a zero value, plus the head's sink logit as its bias
            B, H = q.shape[0], q.shape[1]
            k = torch.cat([k, k.new_zeros(*k.shape[:2], 1, k.shape[3])], dim=2)
            v = torch.cat([v, v.new_zeros(*v.shape[:2], 1, v.shape[3])], dim=2)
            base = (torch.zeros(1, 1, Tq, Tk, dtype=q.dtype, device=q.device) if bias is None
                    else bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape)))
            base = base.expand(max(base.shape[0], B), H, Tq, Tk)
            sink = sinks.to(q.dtype).view(1, H, 1, 1)  # the zero key scores 0: its bias is its whole logit
            bias = torch.cat([base, sink.expand(base.shape[0], H, Tq, 1)], dim=-1)
    if explicit:
        out, weights = explicit_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), bias, causal, dropout_p)
        return out, (weights[..., :Tk] if sinks is not None else weights)
    return _sdpa(q, k, v, bias, causal, dropout_p, n_rep), None


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
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps, cfg.fused_ops) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps, cfg.fused_ops) if cfg.qk_norm else None
        self.fused = cfg.fused_ops
        self.window = cfg.layer_window(layer_idx)
        # gpt-oss initialises its sinks at 0; a learned logit per head, in units of a raw score q.k / sqrt(d)
        self.sinks = nn.Parameter(torch.zeros(cfg.n_heads)) if cfg.attn_sinks else None

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
        if rope is not None and self.fused:  # q and k in one autograd node (mmlab.model.fused)
            q, k = rope_qk(q, k, *rope)
        elif rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        dropout_p = self.dropout if self.training else 0.0
        out, weights = attend(q, k, v, n_rep=self.n_heads // self.n_kv_heads, bias=bias, causal=self.causal,
                              dropout_p=dropout_p, explicit=self.impl == "explicit" or need_weights,
                              window=self.window, sinks=self.sinks)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.resid_dropout(self.o_proj(out)), weights


# torch >= 2.5 lets SDPA read grouped K/V directly; repeat_kv would copy them n_rep times first
# (modules/01-foundation/03-attention exp5_gqa measures the difference on whole decode steps).
_SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


# On the CPU, SDPA's bf16 backward pass is slower than its fp32 one for short sequences (2.7x at 64 tokens,
# 1.3x at 128) and faster for long ones (0.8x at 512): benchmarks/cpu_step.py measures it. Below this
# many keys, training in bf16 autocast computes attention in fp32 (the inputs widened, the output rounded back).
CPU_BF16_SDPA_MIN_KEYS = 256


def _sdpa(q, k, v, bias, causal, dropout_p, n_rep):
    Tq, Tk = q.shape[2], k.shape[2]
    if (q.device.type == "cpu" and q.dtype == torch.bfloat16 and Tk < CPU_BF16_SDPA_MIN_KEYS
            and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
        with torch.autocast("cpu", enabled=False):
            bias = bias.float() if bias is not None else None
            return _sdpa(q.float(), k.float(), v.float(), bias, causal, dropout_p, n_rep).to(q.dtype)
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
