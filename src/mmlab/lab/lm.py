"""Training language models inside experiments: the real data, the real model, the real loop.

``train_lm`` runs the library's ``Trainer`` on TinyShakespeare (characters) and returns what
comparisons need — the loss history, the final validation loss, the step where a run diverged and
its speed — without writing checkpoints. ``cached_train_lm`` keeps a trained model in the lab cache so
that several experiments (and lessons) can read the same one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch

from mmlab.config import ModelConfig, get_preset
from mmlab.data.corpus import load_corpus
from mmlab.data.pretrain import PretrainData, tokenize_corpus
from mmlab.model.lm import MiniMindLM
from mmlab.tokenizer.char import CharTokenizer
from mmlab.train.config import TrainConfig
from mmlab.train.pretrain import PretrainBatches
from mmlab.train.trainer import NextTokenLoss, Trainer, TrainingDiverged


@lru_cache(maxsize=4)
def shakespeare_tokens(corpus: str = "tinyshakespeare") -> tuple[CharTokenizer, Any]:
    """The character tokenizer and token ids of a corpus (cached per process)."""
    c = load_corpus(corpus)
    tok = CharTokenizer.from_corpus("".join(c.documents))
    return tok, tokenize_corpus(c, tok)


def shakespeare_config(**overrides: Any) -> ModelConfig:
    """The ``shakespeare-char`` preset (nanoGPT's baby-GPT size) with some switches changed."""
    tok, _ = shakespeare_tokens()
    return get_preset("shakespeare-char", vocab_size=tok.vocab_size, **overrides)


def batches(block_size: int, batch_size: int, eval_batches: int) -> PretrainBatches:
    _, tokens = shakespeare_tokens()
    data = PretrainData.from_tokens(tokens, 0.1, block_size)
    return PretrainBatches(data, block_size, batch_size, eval_batches, data_name="tinyshakespeare")


class TensorBatches:
    """A BatchSource over fixed (inputs, targets) tensors per split: synthetic tasks in experiments.
    Targets may hold IGNORE_INDEX where nothing is to be predicted."""

    def __init__(self, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], eval_batch_size: int = 64):
        self.splits = splits
        self._eval = {
            name: [(x[i:i + eval_batch_size], y[i:i + eval_batch_size]) for i in range(0, len(x), eval_batch_size)]
            for name, (x, y) in splits.items()
        }

    def sample(self, split: str, rows: int, generator: torch.Generator):
        x, y = self.splits[split]
        i = torch.randint(len(x), (rows,), generator=generator)
        return x[i], y[i]

    def slice_rows(self, batch, start: int, stop: int):
        return tuple(t[start:stop] for t in batch)

    def eval_batches(self, split: str):
        return self._eval.get(split, [])


def block_grad_norms(model: MiniMindLM, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """One backward pass of the LM loss; the gradient norm of each block's parameters, first to last."""
    model.zero_grad(set_to_none=True)
    model(x, targets=y).loss.backward()
    return [torch.sqrt(sum(p.grad.pow(2).sum() for p in b.parameters())).item() for b in model.blocks]


def train_lm(
    cfg: ModelConfig,
    steps: int,
    lr: float,
    seed: int = 0,
    batch_size: int = 12,
    block_size: int | None = None,
    eval_interval: int | None = None,
    eval_batches: int = 20,
    warmup: int | None = None,
    dtype: str = "fp32",
    device: str = "cpu",
    grad_clip: float = 1.0,
    source: Any = None,
    param_dtype: torch.dtype | None = None,
    eval_rows: int | None = None,
    init: MiniMindLM | None = None,
    **train_overrides: Any,
) -> dict[str, Any]:
    """Train ``cfg`` for ``steps`` and report losses. A run *diverges* when its loss or gradient
    becomes NaN/inf (the loop stops there) or when it ends no better than a uniform guess.
    ``source``: a BatchSource other than TinyShakespeare (e.g. ``TensorBatches`` of a synthetic task).
    ``param_dtype``: store the weights (and so the optimizer state) in this dtype, e.g. bfloat16 without
    an fp32 master copy (what mixed precision avoids).
    ``eval_rows``: rows per evaluation batch (default ``batch_size``); fix it to compare runs of different
    batch sizes on the same held-out windows.
    ``init``: start from this model's weights instead of a fresh initialisation (a fine-tune); ``cfg`` may
    differ from its config only where no weights are stored (``max_seq_len`` or ``rope_scaling`` with RoPE).
    ``train_overrides``: other TrainConfig fields (``schedule``, ``optimizer``, ``grad_accum``, ...)."""
    block = block_size or cfg.max_seq_len
    warmup = min(100, steps // 10) if warmup is None else warmup
    with tempfile.TemporaryDirectory() as out:
        tcfg = TrainConfig(out_dir=out, max_iters=steps, batch_size=batch_size, block_size=block, lr=lr,
                           min_lr=lr / 10, warmup_iters=warmup, eval_interval=eval_interval or max(1, steps // 5),
                           eval_batches=eval_batches, log_interval=max(1, steps // 50), seed=seed,
                           grad_clip=grad_clip, dtype=dtype, device=device, progress=False,
                           save_checkpoints=False, plot=False, **train_overrides)
        torch.manual_seed(seed)
        model = MiniMindLM(cfg)
        if init is not None:
            model.load_state_dict(init.state_dict())
        if param_dtype is not None:
            model = model.to(param_dtype)
        source = source if source is not None else batches(block, eval_rows or batch_size, eval_batches)
        trainer = Trainer(model, NextTokenLoss(), source, tcfg)
        diverged_at = None
        try:
            result = trainer.fit()
            history, elapsed = result.history, result.elapsed_s
        except TrainingDiverged as e:
            diverged_at, history, elapsed = e.step, trainer.history, None
    evals = [r for r in history if "val_loss" in r]
    train = [r for r in history if "loss" in r]
    final_val = evals[-1]["val_loss"] if evals and diverged_at is None else float("nan")
    if diverged_at is None and not final_val < math.log(cfg.vocab_size):
        diverged_at = steps  # finished, but no better than guessing uniformly
    rates = [r["tokens_per_s"] for r in train[1:]] or [r["tokens_per_s"] for r in train] or [float("nan")]
    rates.sort()
    return {
        "final_val_loss": final_val,
        "diverged_at": diverged_at,
        "val_curve": [(r["step"], r["val_loss"]) for r in evals],
        "train_curve": [(r["step"], r["loss"]) for r in train],
        "tokens_per_s": rates[len(rates) // 2],
        "elapsed_s": elapsed,
        "model": model,
    }


LM_CACHE_VERSION = 1  # part of every cached model's key: raise it when a library change alters what training produces


def cached_train_lm(cfg: ModelConfig, steps: int, lr: float, *, cache: bool = True,
                    log: Callable[[str], None] | None = None, **train_args: Any) -> dict[str, Any]:
    """``train_lm`` on TinyShakespeare, with the trained weights kept in the lab cache (``$MMLAB_LAB_CACHE``,
    default ``~/.cache/mmlab/lab``) under a hash of every setting: experiments that study the same model
    share one training run (the position-encoding lesson trains a RoPE model on 64-character windows; the
    long-context lesson reads it at 512). ``train_args``: ``train_lm``'s other keyword arguments, JSON values
    only (``source``, ``init`` and ``param_dtype`` are for ``train_lm`` itself). ``cache=False`` (smoke runs)
    trains and writes nothing.

    Returns ``{"model", "final_val_loss", "settings", "path", "from_cache"}``; a fresh run also carries
    ``train_lm``'s other results. The same settings give the same model either way."""
    from mmlab.errors import MMLabError
    from mmlab.lab.posttrain import cache_root

    settings = {"version": LM_CACHE_VERSION, "data": "tinyshakespeare", "model": cfg.to_dict(), "steps": steps,
                "lr": lr, **train_args}
    try:
        blob = json.dumps(settings, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise MMLabError(f"cached_train_lm: every setting must be a plain JSON value ({e}); "
                         "call train_lm for a custom source, init or param_dtype") from None
    path = cache_root() / f"lm-{hashlib.sha256(blob.encode()).hexdigest()[:12]}.pt"
    if cache and path.is_file():
        saved = torch.load(path, weights_only=True)
        model = MiniMindLM(cfg)
        model.load_state_dict(saved["state_dict"])
        if log:
            log(f"loaded the trained model from {path}")
        return {"model": model, "final_val_loss": saved["final_val_loss"], "settings": settings, "path": str(path),
                "from_cache": True}
    if log:
        log(f"training {cfg.name} for {steps} steps" + (f" (cached in {path} for later runs)" if cache else ""))
    result = train_lm(cfg, steps, lr, **train_args)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        torch.save({"state_dict": result["model"].state_dict(), "final_val_loss": result["final_val_loss"],
                    "settings": blob}, tmp)
        os.replace(tmp, path)  # a crash never leaves a half-written model under the final name
    return {**result, "settings": settings, "path": str(path) if cache else None, "from_cache": False}


def document_splits(corpus: str, val_fraction: float = 0.1,
                    max_chars: int | None = None) -> tuple[list[str], list[str]]:
    """A corpus' documents split in order: the first (1 - val_fraction) for training (tokenizers
    included), the rest held out; a single document (TinyShakespeare) is cut at the same fraction of its
    characters. ``max_chars`` keeps the first documents up to that many characters."""
    docs = load_corpus(corpus).documents
    if max_chars is not None:
        kept, total = [], 0
        for d in docs:
            if total >= max_chars:
                break
            kept.append(d[: max_chars - total])
            total += len(kept[-1])
        docs = kept
    if len(docs) == 1:
        cut = len(docs[0]) - int(len(docs[0]) * val_fraction)
        return [docs[0][:cut]], [docs[0][cut:]]
    n_val = max(1, int(len(docs) * val_fraction))
    return docs[:-n_val], docs[-n_val:]


def token_batches(tokenizer: Any, train_docs: list[str], val_docs: list[str], block_size: int, batch_size: int,
                  eval_batches: int) -> PretrainBatches:
    """A pretraining BatchSource over documents encoded with ``tokenizer`` (ENDOFTEXT between documents
    when the tokenizer has it; a single document is used as it is)."""
    from mmlab.tokenizer.base import ENDOFTEXT

    eot = tokenizer.token_to_id(ENDOFTEXT)

    def encode(docs: list[str]) -> torch.Tensor:
        ids: list[int] = []
        for d in docs:
            ids += tokenizer.encode(d, allow_special=False)
            if eot is not None and len(docs) > 1:
                ids.append(eot)
        return torch.tensor(ids, dtype=torch.int32)

    data = PretrainData(train=encode(train_docs), val=encode(val_docs))
    return PretrainBatches(data, block_size, batch_size, eval_batches)


def train_on_text(tokenizer: Any, train_docs: list[str], val_docs: list[str], steps: int, lr: float, *, seed: int,
                  block_size: int, batch_size: int, eval_batches: int) -> tuple[dict[str, Any], Any]:
    """The tokenizer lessons' comparison: the same small model (4 layers x 128, 4 heads; only its embedding
    and output layer follow the vocabulary) trained on documents encoded with ``tokenizer``, then measured
    on every held-out token. Returns ``train_lm``'s result (with the model) and the ``SplitLoss``."""
    from mmlab.train.evaluate import split_loss

    source = token_batches(tokenizer, train_docs, val_docs, block_size, batch_size, eval_batches=eval_batches)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=128, n_layers=4, n_heads=4,
                      max_seq_len=block_size, rope_theta=1e4)
    r = train_lm(cfg, steps, lr, seed=seed, batch_size=batch_size, block_size=block_size, source=source,
                 eval_batches=eval_batches)
    r["train_tokens"] = len(source.data.train)
    return r, split_loss(r["model"], source.data.val, tokenizer, block_size)


def shakespeare_val_windows(n: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` non-overlapping windows (inputs, next-token targets), each (n, length), from the start of
    TinyShakespeare's held-out split (its last 10%): the same characters for every variant of an experiment."""
    from mmlab.data.pretrain import PretrainData

    _, tokens = shakespeare_tokens()
    val = torch.as_tensor(PretrainData.from_tokens(tokens, 0.1, length).val).long()
    if len(val) < n * length + 1:
        raise ValueError(f"the held-out split has {len(val):,} characters, too few for {n} windows of {length}")
    return val[: n * length].view(n, length), val[1: n * length + 1].view(n, length)


def loss_per_position(model: MiniMindLM, x: torch.Tensor, y: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """Mean next-token loss (nats) at each position over the windows: (T,). x, y: (N, T)."""
    model.eval()
    total = torch.zeros(x.shape[1])
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(x[i:i + batch]).logits
            losses = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), y[i:i + batch], reduction="none")
            total += losses.sum(0)
    return total / len(x)
