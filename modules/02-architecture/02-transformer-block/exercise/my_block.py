"""Exercise: build a decoder block from scratch — then check it against mmlab's own.

Fill in every TODO with plain PyTorch (no imports from mmlab). The block is the Llama/MiniMind one:

    x = x + attention(rmsnorm_1(x))        causal, multi-head, grouped K/V heads, RoPE on q and k
    x = x + swiglu(rmsnorm_2(x))

Keep the submodule names below: the checker loads mmlab's weights into your block by name and compares
outputs and gradients. Check it with

    mmlab exercise check-block modules/02-architecture/02-transformer-block/exercise/my_block.py

``cfg`` is an ``mmlab.config.ModelConfig``; you need cfg.hidden_size, cfg.n_heads, cfg.kv_heads
(key/value heads), cfg.head_dim, cfg.resolved_ffn_size and cfg.norm_eps. ``rope`` is a pair
(cos, sin) of shape (T, head_dim) for the positions of x, in the "rotate half" layout:
rotated = x * cos + rotate_half(x) * sin, where rotate_half([a, b]) = [-b, a] for the two halves.
"""

import torch
from torch import nn


class Todo(NotImplementedError):
    """Raised by the parts you have not written yet (the checker reports them as "not implemented yet")."""


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise Todo("TODO: x / sqrt(mean(x^2) + eps) * weight (compute in float32)")


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        raise Todo(
            "TODO: project to q, k, v and split into heads; rotate q and k with rope; repeat each K/V head "
            "for its group of query heads; softmax(q k^T / sqrt(head_dim) + causal mask) v; merge heads; o_proj"
        )


class SwiGLU(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hidden = cfg.resolved_ffn_size
        self.gate_proj = nn.Linear(cfg.hidden_size, hidden, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise Todo("TODO: down_proj(silu(gate_proj(x)) * up_proj(x))")


class MyBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.ffn = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        raise Todo("TODO: the two pre-norm residual sub-layers")
