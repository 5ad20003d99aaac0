"""Perplexity and bits per byte of a model on a text corpus.

    loss        = total nats / tokens predicted            (mean cross-entropy per token)
    perplexity  = exp(loss)                                 (depends on the tokenizer: not comparable across them)
    bits/byte   = total nats / ln 2 / UTF-8 bytes of the text predicted      (comparable across tokenizers)

The corpus is tokenized exactly as pretraining does (documents joined by ``<|endoftext|>``), and every
token is predicted once, in non-overlapping windows of the model's context (``mmlab.train.evaluate``).
A tokenizer with ``<|endoftext|>`` gets one in front, so the first token is predicted too and the text
scored is the whole corpus; the end-of-text tokens between documents are predicted but spell no bytes.
``split="val"``: only the last ``val_fraction`` of the token stream, the part pretraining held out.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mmlab.data.corpus import load_corpus
from mmlab.errors import MMLabError
from mmlab.model.lm import MiniMindLM
from mmlab.tokenizer.base import ENDOFTEXT, Tokenizer

SPLITS = ("all", "val")


def corpus_tokens(data: str, tok: Tokenizer, split: str = "all", val_fraction: float = 0.1,
                  corpus_seed: int = 0) -> torch.Tensor:
    """The token stream of ``data`` (a corpus name or path) as pretraining lays it out, or its val part.
    ``corpus_seed``: which synthetic corpus (pretraining draws it with the run's seed)."""
    from mmlab.data.pretrain import tokenize_corpus

    if split not in SPLITS:
        raise MMLabError(f"split={split!r} is not one of: {', '.join(SPLITS)}")
    tokens = torch.from_numpy(tokenize_corpus(load_corpus(data, seed=corpus_seed), tok).astype("int64"))
    if split == "val":
        n_val = int(len(tokens) * val_fraction)
        if n_val < 2:
            raise MMLabError(f"{data}: the val split ({val_fraction:g} of {len(tokens):,} tokens) is too small")
        return tokens[len(tokens) - n_val:]
    eot = tok.token_to_id(ENDOFTEXT)
    return torch.cat([torch.tensor([eot]), tokens]) if eot is not None else tokens


def perplexity(model: MiniMindLM, tok: Tokenizer, data: str, split: str = "all", limit: int | None = None,
               val_fraction: float = 0.1, corpus_seed: int = 0) -> dict[str, Any]:
    """Loss, perplexity and bits per byte over the corpus ``data`` (the first ``limit`` predicted tokens)."""
    from mmlab.train.evaluate import split_loss

    tokens = corpus_tokens(data, tok, split, val_fraction, corpus_seed)
    if limit is not None:
        tokens = tokens[:limit + 1]
    r = split_loss(model, tokens, tok, block_size=model.cfg.max_seq_len)
    if r.bytes == 0:
        raise MMLabError(f"{data}: the scored tokens spell no text (0 bytes)")
    return {
        "n": r.tokens,
        "data": data,
        "split": split,
        "metrics": {"loss": r.loss, "perplexity": math.exp(r.loss), "bits_per_byte": r.bits_per_byte,
                    "nats": r.nats, "tokens": r.tokens, "bytes": r.bytes, "bytes_per_token": r.bytes_per_token},
        "metric_help": {"bits_per_byte": "total nats / ln 2 / UTF-8 bytes of the text the scored tokens spell",
                        "perplexity": "exp(mean nats per token): depends on the tokenizer"},
        "chance": {"bits_per_byte": math.log2(model.cfg.vocab_size) / r.bytes_per_token,
                   "perplexity": float(model.cfg.vocab_size)},
        "chance_note": "a model that spreads probability evenly over the vocabulary",
    }
