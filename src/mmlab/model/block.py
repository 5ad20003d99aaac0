"""The transformer block: attention then feed-forward, each wrapped in a norm and a residual.

Pre-LN (GPT-2 onwards, Llama):   x = x + attn(norm(x));   x = x + ffn(norm(x))
Post-LN (the 2017 Transformer):  x = norm(x + attn(x));   x = norm(x + ffn(x))

Sandwich (CogView, Gemma 2):     x = x + norm'(attn(norm(x)))  — also normalises what each sub-layer writes
Parallel (GPT-J, PaLM):          x = x + attn(norm(x)) + ffn(norm(x))  — one norm, both sub-layers side by side

Pre-LN keeps an un-normalised "residual stream" from input to output, so gradients reach early
layers undiminished; Post-LN normalises that stream after every sub-layer.
"""

from __future__ import annotations

import torch
from torch import nn

from mmlab.config import ModelConfig
from mmlab.model.attention import Attention
from mmlab.model.ffn import make_ffn
from mmlab.model.kv_cache import KVCache
from mmlab.model.mla import LatentAttention
from mmlab.model.moe import MoE
from mmlab.model.norm import make_norm


class Block(nn.Module):
    """x (B, T, C) -> (B, T, C), plus the attention weights when asked for."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.pre_norm = cfg.norm_position in ("pre", "sandwich")
        self.residual, self.parallel = cfg.residual, cfg.parallel_block
        # A removed sub-layer (use_attn / use_ffn = False) takes its norm with it: the block is then
        # one sub-layer, and an attention-only or FFN-only model has no unused parameters.
        sandwich = cfg.norm_position == "sandwich"
        if cfg.use_attn:
            self.attn_norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps, cfg.fused_ops)
            self.attn = LatentAttention(cfg, layer_idx) if cfg.attention == "mla" else Attention(cfg, layer_idx)
            if sandwich:
                self.attn_out_norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps, cfg.fused_ops)
        if cfg.use_ffn:
            if not cfg.parallel_block:  # the parallel block reads attn_norm(x) for both sub-layers
                self.ffn_norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps, cfg.fused_ops)
            self.ffn = MoE(cfg) if cfg.n_experts else make_ffn(cfg)
            if sandwich:
                self.ffn_out_norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps, cfg.fused_ops)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        bias: torch.Tensor | None = None,
        cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        weights = None
        if self.parallel:
            h = self.attn_norm(x)
            a, weights = self.attn(h, rope, bias, cache, need_weights)
            out = a + self.ffn(h)
            return (x + out if self.residual else out), weights
        if hasattr(self, "attn"):
            if self.pre_norm:
                h, weights = self.attn(self.attn_norm(x), rope, bias, cache, need_weights)
                if hasattr(self, "attn_out_norm"):
                    h = self.attn_out_norm(h)
                x = x + h if self.residual else h
            else:
                h, weights = self.attn(x, rope, bias, cache, need_weights)
                x = self.attn_norm(x + h if self.residual else h)
        if hasattr(self, "ffn"):
            if self.pre_norm:
                h = self.ffn(self.ffn_norm(x))
                if hasattr(self, "ffn_out_norm"):
                    h = self.ffn_out_norm(h)
                x = x + h if self.residual else h
            else:
                x = self.ffn_norm(x + self.ffn(x) if self.residual else self.ffn(x))
        return x, weights
