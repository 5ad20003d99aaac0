"""Held-out measurement of a language model: the loss over a whole token split, and bits per byte.

The training loop's progress numbers come from a few fixed random batches. For results we report,
``split_loss`` predicts every token of a split exactly once, in non-overlapping windows of
``block_size`` (each token sees the context from its window's start). Bits per byte divide the
summed loss by the UTF-8 bytes the tokens spell, so models with different tokenizers compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mmlab.errors import MMLabError
from mmlab.tokenizer.base import SPECIAL_TOKENS, Tokenizer


@dataclass(frozen=True)
class SplitLoss:
    nats: float  # summed cross-entropy
    tokens: int  # predicted tokens
    bytes: int  # UTF-8 bytes of the predicted tokens' text (special tokens count 0)

    @property
    def loss(self) -> float:
        """Mean nats per token."""
        return self.nats / self.tokens

    @property
    def bits_per_byte(self) -> float:
        return self.nats / math.log(2) / self.bytes

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / self.tokens


@torch.no_grad()
def summed_loss(model: torch.nn.Module, tokens: torch.Tensor, block_size: int,
                batch_size: int = 32) -> tuple[float, int]:
    """Summed next-token loss (nats) and number of predicted tokens over ``tokens`` (1-D), cut into
    non-overlapping windows of ``block_size`` (a shorter last window included)."""
    n = len(tokens)
    if n < 2:
        raise MMLabError(f"cannot measure a loss on {n} token(s): the held-out text needs at least 2 tokens "
                         "(one of context, one to predict)")
    was_training = model.training
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device
    starts = list(range(0, n - 1, block_size))
    full = [s for s in starts if s + block_size + 1 <= n]
    rest = [s for s in starts if s + block_size + 1 > n]
    total, count = 0.0, 0
    groups = [full[i:i + batch_size] for i in range(0, len(full), batch_size)] + [[s] for s in rest]
    for rows in groups:
        window = torch.stack([tokens[s:min(s + block_size + 1, n)].long() for s in rows]).to(device)
        x, y = window[:, :-1], window[:, 1:]
        logits = model(x).logits.float()
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    return total, count


def text_bytes(tokenizer: Tokenizer, ids: list[int]) -> int:
    """UTF-8 bytes of the text ``ids`` spell; special tokens (not text) count 0."""
    special = {tokenizer.token_to_id(t) for t in SPECIAL_TOKENS} - {None}
    return len(tokenizer.decode([i for i in ids if i not in special]).encode("utf-8"))


def split_loss(model: torch.nn.Module, tokens: torch.Tensor, tokenizer: Tokenizer, block_size: int,
               batch_size: int = 32) -> SplitLoss:
    """Loss over every token of ``tokens`` (the first is context only) and the bytes they spell."""
    nats, n = summed_loss(model, tokens, block_size, batch_size)
    return SplitLoss(nats, n, text_bytes(tokenizer, tokens[1:].tolist()))
