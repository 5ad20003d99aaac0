"""Normalization layers: RMSNorm (Llama, MiniMind), LayerNorm (GPT-2) or none (the ablation)."""

from __future__ import annotations

import torch
from torch import nn

from mmlab.model.fused import rms_norm


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight.  x: (..., C) -> (..., C).

    Unlike LayerNorm it does not subtract the mean and has no bias: one reduction instead of two,
    and (empirically) no loss in quality. Computed in float32 so bf16 activations do not lose
    precision in the mean of squares, then cast back.
    """

    def __init__(self, dim: int, eps: float = 1e-5, fused: bool = False):
        super().__init__()
        self.eps, self.fused = eps, fused
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:  # the same computation as one autograd node (mmlab.model.fused)
            return rms_norm(x, self.weight, self.eps)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def make_norm(kind: str, dim: int, eps: float, fused: bool = False) -> nn.Module:
    """The norm a config asks for; ``none`` is an identity so the block code has no special case."""
    if kind == "rmsnorm":
        return RMSNorm(dim, eps, fused)
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")
