"""Absolute and bias-based position encodings: learned, sinusoidal (Vaswani et al.) and ALiBi.

RoPE lives in rope.py because it acts inside attention; these act on the embeddings (learned,
sinusoidal) or on the attention scores (ALiBi).
"""

from __future__ import annotations

import math

import torch


def sinusoidal_table(max_len: int, dim: int) -> torch.Tensor:
    """(max_len, dim): PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...). Not learned."""
    positions = torch.arange(max_len, dtype=torch.float32)[:, None]
    freqs = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(positions * freqs)
    table[:, 1::2] = torch.cos(positions * freqs)
    return table


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Per-head slopes of ALiBi (Press et al. 2022): a geometric sequence 2^(-8/n), 2^(-16/n), ...

    For a head count that is not a power of two, the paper interleaves the slopes of the next power.
    """

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = power_of_two(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_two(closest) + power_of_two(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """Additive score bias (1, H, Tq, Tk): -slope * distance, so far-away keys are penalised linearly."""
    distance = (q_pos[:, None] - k_pos[None, :]).abs().float()  # (Tq, Tk)
    return (-slopes[:, None, None] * distance)[None]
