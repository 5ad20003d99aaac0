"""Position-wise feed-forward networks: expand, apply a non-linearity, compress.

SwiGLU (Shazeer 2020; Llama, MiniMind) gates one expansion with SiLU of another:
    down(silu(gate(x)) * up(x))       three matrices, hidden size ~8/3 * C
The classic two-matrix FFN:
    down(act(up(x)))                  act in {GELU (GPT-2), ReLU (the original Transformer), ReLU^2}
and, as an ablation, ``linear`` (no activation): then down(up(x)) is a single matrix of rank <= C,
however wide the hidden layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmlab.config import ModelConfig
from mmlab.model.fused import silu_mul


class SwiGLU(nn.Module):
    """x (B, T, C) -> (B, T, C) through a gated hidden layer of size ``hidden``."""

    def __init__(self, dim: int, hidden: int, bias: bool = False, dropout: float = 0.0, fused: bool = False):
        super().__init__()
        self.fused = fused
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:  # SiLU(gate) * up as one autograd node (mmlab.model.fused)
            return self.dropout(self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x))))
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


def relu2(x: torch.Tensor) -> torch.Tensor:
    """ReLU squared (So et al. 2021, "Primer"; used by nanochat)."""
    return F.relu(x).square()


ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "relu2": relu2, "linear": nn.Identity()}


class MLP(nn.Module):
    """x (B, T, C) -> (B, T, C): down(act(up(x))), the two-matrix FFN."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu", bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.act_name = act
        self.act = ACTIVATIONS[act]
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(self.act(self.up_proj(x))))

    def extra_repr(self) -> str:
        return f"act={self.act_name}"


def make_ffn(cfg: ModelConfig) -> nn.Module:
    if cfg.ffn_act == "swiglu":
        return SwiGLU(cfg.hidden_size, cfg.resolved_ffn_size, cfg.bias, cfg.dropout, cfg.fused_ops)
    return MLP(cfg.hidden_size, cfg.resolved_ffn_size, cfg.ffn_act, cfg.bias, cfg.dropout)
