"""Rotary position embedding (RoPE) and its long-context scalings (linear, NTK-aware, YaRN).

RoPE rotates each pair of dimensions of q and k by an angle proportional to the position, with a
different frequency per pair. The dot product q_m . k_n then depends only on m - n: attention sees
relative positions, and no position parameters are learned.

We use the "rotate half" layout of Hugging Face's Llama (pairs are (i, i + d/2), not (2i, 2i+1)),
so weights move between mmlab and `transformers` without permuting q/k projections.
"""

from __future__ import annotations

import math

import torch

from mmlab.config import RopeScaling


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies, shape (head_dim/2,), and the attention factor to multiply cos/sin by.

    Frequency i is theta^(-2i/d): pair 0 turns once per radian of position, the last pair very slowly.
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
    if scaling is None:
        return 1.0 / theta**exponents, 1.0
    if scaling.kind == "linear":  # position interpolation: squeeze positions by `factor`
        return 1.0 / (scaling.factor * theta**exponents), 1.0
    if scaling.kind == "ntk":  # raise the base: low frequencies stretch by ~factor, high ones stay
        base = theta * scaling.factor ** (head_dim / (head_dim - 2))
        return 1.0 / base**exponents, 1.0
    return _yarn_inv_freq(head_dim, theta, scaling)


def _yarn_inv_freq(head_dim: int, theta: float, s: RopeScaling) -> tuple[torch.Tensor, float]:
    """YaRN (Peng et al. 2023): per-frequency blend of extrapolation and interpolation."""
    pos_freqs = theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    extrapolated, interpolated = 1.0 / pos_freqs, 1.0 / (s.factor * pos_freqs)

    def dim_for_rotations(n_rot: float) -> float:
        # the dimension index whose wavelength fits n_rot times into the original context
        return head_dim * math.log(s.original_max_seq_len / (n_rot * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(dim_for_rotations(s.beta_fast)), 0)
    high = min(math.ceil(dim_for_rotations(s.beta_slow)), head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: high-frequency pair, kept as trained; 0: low-frequency pair, interpolated
    inv_freq = interpolated * (1 - keep) + extrapolated * keep
    attention_factor = 0.1 * math.log(s.factor) + 1.0 if s.factor > 1 else 1.0
    return inv_freq, attention_factor


def precompute_rope(
    head_dim: int, max_len: int, theta: float, scaling: RopeScaling | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each (max_len, head_dim), for positions 0..max_len-1."""
    inv_freq, attention_factor = rope_inv_freq(head_dim, theta, scaling)
    return rope_tables(inv_freq, max_len, attention_factor)


def rope_tables(
    inv_freq: torch.Tensor, max_len: int, attention_factor: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each (max_len, 2 * len(inv_freq)), for any inverse frequencies (head_dim/2,):
    what ``precompute_rope`` builds from ``rope_inv_freq``, open to frequencies chosen by hand."""
    positions = torch.arange(max_len, dtype=torch.float32)
    angles = torch.outer(positions, inv_freq)  # (T, d/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, d): pair i uses columns i and i + d/2
    return angles.cos() * attention_factor, angles.sin() * attention_factor


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension: a 90-degree turn of each pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate q or k.  x: (B, H, T, D); cos, sin: (T, D) for the positions of x."""
    return (x * cos + rotate_half(x) * sin).to(x.dtype)
