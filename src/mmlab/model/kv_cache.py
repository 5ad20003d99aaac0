"""The key/value cache for incremental decoding.

Without a cache, generating token t recomputes keys and values for all t-1 earlier tokens: O(t^2)
work per sequence. With it, each step computes k and v for the new token only and attends over the
stored ones. Memory per token: 2 (k and v) * n_layers * n_kv_heads * head_dim * bytes per value —
which is why GQA/MQA (fewer KV heads) matter for inference.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer for the positions seen so far.

    ``static=True`` preallocates ``max_len`` positions on first use and writes in place (no
    reallocation per step, as in gpt-fast); ``static=False`` grows by concatenation.
    ``windows[layer]`` (a sliding window W): that layer keeps only the last W - 1 positions between
    calls, all a later query can see, so its memory stops growing at the window.
    The model reads ``seq_len`` as the position of the next token and calls ``advance`` after a
    forward pass has written all layers. ``update`` returns keys that end at the newest position
    (the attention reads their positions from that).
    """

    def __init__(self, n_layers: int, max_len: int, static: bool = True, windows: list[int | None] | None = None):
        self.n_layers, self.max_len, self.static = n_layers, max_len, static
        self.windows = windows or [None] * n_layers
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.seq_len = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H_kv, T, D) at positions seq_len.. and return all keys/values so far (for a windowed
        layer: the kept window, then these)."""
        start, end = self.seq_len, self.seq_len + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; writing up to {end}")
        window = self.windows[layer]
        if window is not None:
            keys = k if self.keys[layer] is None else torch.cat([self.keys[layer], k], dim=2)
            values = v if self.values[layer] is None else torch.cat([self.values[layer], v], dim=2)
            keep = window - 1  # the next query sees itself and window - 1 earlier positions
            first = max(0, keys.shape[2] - keep)
            self.keys[layer], self.values[layer] = keys[:, :, first:], values[:, :, first:]
            return keys, values
        if not self.static:
            if self.keys[layer] is None:
                self.keys[layer], self.values[layer] = k, v
            else:
                self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)
                self.values[layer] = torch.cat([self.values[layer], v], dim=2)
            return self.keys[layer], self.values[layer]
        if self.keys[layer] is None:
            B, H, _, D = k.shape
            self.keys[layer] = k.new_zeros(B, H, self.max_len, D)
            self.values[layer] = v.new_zeros(B, v.shape[1], self.max_len, v.shape[3])  # MLA: other widths
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.seq_len += n

    def nbytes(self) -> int:
        """Bytes held right now (the full preallocation for a static cache; the window for a windowed layer)."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)
