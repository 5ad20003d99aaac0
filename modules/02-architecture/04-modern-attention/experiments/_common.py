"""Shared by the modern-attention lesson's experiments: held-out windows, the loss at every position, the same
weights read with other attention switches, and a probe that records attention logits during training.

Everything here measures; the models are the library's (``mmlab.model``) trained by the library's loop
(``mmlab.lab.lm.train_lm``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.nn.modules.module import register_module_forward_hook

from mmlab.data.pretrain import PretrainData
from mmlab.lab.lm import loss_per_position, shakespeare_tokens, shakespeare_val_windows  # noqa: F401 (used by the experiments)
from mmlab.model.attention import Attention, repeat_kv, window_bias
from mmlab.model.lm import MiniMindLM
from mmlab.model.rope import apply_rope


def val_windows(n: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` held-out windows of ``length`` characters (``mmlab.lab.lm.shakespeare_val_windows``)."""
    return shakespeare_val_windows(n, length)


def span_means(curve: torch.Tensor | list[float], spans: dict[str, tuple[int, int]]) -> dict[str, float]:
    """The mean of a per-position curve over each span (0-based, end excluded; labels are 1-based)."""
    c = torch.as_tensor(curve, dtype=torch.float64)
    return {name: float(c[a:b].mean()) for name, (a, b) in spans.items()}


def reread(model: MiniMindLM, **changes: Any) -> MiniMindLM:
    """The same weights under a config changed only where no weight depends on it (``sliding_window``,
    ``global_every``, ``max_seq_len`` with RoPE, ``attn_impl``): e.g. a model trained with full attention read
    through a sliding window, as StreamingLLM's "window attention" does."""
    other = MiniMindLM(model.cfg.replace(**changes))
    other.load_state_dict(model.state_dict())
    return other.eval()


def unigram_entropy() -> float:
    """Entropy (nats per character) of TinyShakespeare's training split's character frequencies: the loss of
    a model that learned the letter frequencies and nothing else."""
    tok, tokens = shakespeare_tokens()
    train = torch.as_tensor(PretrainData.from_tokens(tokens, 0.1, 64).train).long()
    p = torch.bincount(train, minlength=tok.vocab_size).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def attention_logits(module: Attention, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                     ) -> torch.Tensor:
    """The raw scores q.k / sqrt(head_dim) that ``module`` feeds its softmax, recomputed from its input x (B, T, C)
    exactly as ``Attention.forward`` computes q and k (projection, QK-norm, RoPE); masked pairs are -inf.
    Returns (B, H, T, T)."""
    B, T, _ = x.shape
    q = module.q_proj(x).view(B, T, module.n_heads, module.head_dim)
    k = module.k_proj(x).view(B, T, module.n_kv_heads, module.head_dim)
    if module.q_norm is not None:
        q, k = module.q_norm(q), module.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    k = repeat_kv(k, module.n_heads // module.n_kv_heads)
    pos = torch.arange(T, device=x.device)
    return q @ k.transpose(-2, -1) / math.sqrt(module.head_dim) + window_bias(pos, pos, module.window, q.dtype)


class LogitProbe:
    """While active (``with LogitProbe() as probe:``), every training-mode forward of every ``Attention`` layer
    records the largest attention logit q.k / sqrt(d) over the pairs its mask allows (every row, head and
    sequence of the batch) and the mean entropy of its attention rows. A global module hook, so it sees models
    that ``train_lm`` builds inside itself; evaluation passes (eval mode) are not recorded."""

    def __init__(self) -> None:
        self.records: list[tuple[int, float, float]] = []  # (layer, max logit, mean row entropy in nats)

    def __enter__(self) -> LogitProbe:
        self._handle = register_module_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()

    def _hook(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if not isinstance(module, Attention) or not module.training:
            return
        with torch.no_grad():
            scores = attention_logits(module, args[0], args[1] if len(args) > 1 else None).float()
            p = torch.softmax(scores, dim=-1)
            entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean()
            self.records.append((module.layer_idx, scores.max().item(), entropy.item()))

    def per_step(self, n_layers: int) -> tuple[list[float], list[float]]:
        """Per training step: the max logit over layers, and the mean row entropy over layers."""
        steps = len(self.records) // n_layers
        rec = self.records[: steps * n_layers]
        maxes = [max(r[1] for r in rec[i * n_layers:(i + 1) * n_layers]) for i in range(steps)]
        ents = [sum(r[2] for r in rec[i * n_layers:(i + 1) * n_layers]) / n_layers for i in range(steps)]
        return maxes, ents


def finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
