"""Log-likelihood of a continuation given a context: the quantity multiple-choice scoring compares.

    log p(continuation | context) = sum over the continuation's tokens t of log p(t | everything before it)

Context and continuation are encoded separately and concatenated, so the continuation's tokens are exactly
the tokens of its text (encoding them together could merge a token across the boundary). Text is encoded
as text (``allow_special=False``). A tokenizer with ``<|endoftext|>`` gets it in front, as every document
but the first had in pretraining; a context too long for the model loses its oldest tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmlab.errors import MMLabError
from mmlab.model.lm import MiniMindLM
from mmlab.tokenizer.base import ENDOFTEXT, Tokenizer


class TooLong(MMLabError):
    """A continuation (or prompt) that does not fit the model's context."""


class LogLikelihood:
    """``scorer(context, continuations) -> [summed log-probability of each continuation]`` for a model."""

    def __init__(self, model: MiniMindLM, tokenizer: Tokenizer):
        self.model, self.tok = model.eval(), tokenizer
        eot = tokenizer.token_to_id(ENDOFTEXT)
        self.prefix = [eot] if eot is not None else []

    def encode(self, context: str, continuation: str) -> tuple[list[int], int]:
        """Ids of prefix + context + continuation (oldest tokens dropped to fit) and the continuation's length."""
        ctx = self.prefix + self.tok.encode(context, allow_special=False)
        cont = self.tok.encode(continuation, allow_special=False)
        limit = self.model.cfg.max_seq_len + 1  # the model reads all but the last token
        if not cont:
            raise TooLong(f"the continuation {continuation!r} encodes to no tokens")
        if len(cont) >= limit or not ctx:
            raise TooLong(f"a continuation of {len(cont)} tokens leaves no context in {limit - 1} positions")
        return (ctx + cont)[-limit:], len(cont)

    @torch.no_grad()
    def __call__(self, context: str, continuations: Sequence[str]) -> list[float]:
        rows = [self.encode(context, c) for c in continuations]
        width = max(len(ids) for ids, _ in rows)
        device = next(self.model.parameters()).device
        batch = torch.zeros(len(rows), width, dtype=torch.long)
        for r, (ids, _) in enumerate(rows):
            batch[r, :len(ids)] = torch.tensor(ids)  # right padding: a causal model never sees it
        logits = self.model(batch[:, :-1].to(device)).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, batch[:, 1:, None].to(device)).squeeze(-1)
        # row r predicts its continuation at positions len(ids)-1-n .. len(ids)-2 of the shifted targets
        return [logprobs[r, len(ids) - 1 - n:len(ids) - 1].sum().item() for r, (ids, n) in enumerate(rows)]
