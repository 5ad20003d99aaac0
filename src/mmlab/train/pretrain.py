"""Pretraining: corpus -> tokenizer -> cached tokens -> model -> the training loop."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmlab.config import ModelConfig, get_preset
from mmlab.data.corpus import Corpus, load_corpus
from mmlab.data.pretrain import PretrainData, tokenize_corpus
from mmlab.errors import MMLabError
from mmlab.model.lm import MiniMindLM
from mmlab.tokenizer.base import ENDOFTEXT, SPECIAL_TOKENS, Tokenizer, load_tokenizer
from mmlab.tokenizer.bpe import train_bpe
from mmlab.tokenizer.char import CharTokenizer
from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_trainer_state, resolve_checkpoint
from mmlab.train.config import TrainConfig
from mmlab.train.trainer import NextTokenLoss, Trainer, TrainResult


@dataclass
class PretrainBatches:
    """The BatchSource of pretraining: random windows of the token stream."""

    data: PretrainData
    block_size: int
    eval_batch_size: int
    n_eval_batches: int
    data_name: str = ""
    corpus_sha256: str = ""

    def __post_init__(self) -> None:
        self._eval = {
            split: self.data.eval_batches(split, self.n_eval_batches, self.eval_batch_size, self.block_size)
            for split in ("train", "val") if len(getattr(self.data, split)) > self.block_size + 1
        }

    def sample(self, split: str, rows: int, generator: torch.Generator):
        return self.data.get_batch(split, rows, self.block_size, generator)

    def slice_rows(self, batch, start: int, stop: int):
        return tuple(t[start:stop] for t in batch)

    def eval_batches(self, split: str):
        return self._eval.get(split, [])


RUN_FILES = ("ckpt", "ckpt.old", "best", "best.old", "metrics.jsonl", "train_config.json", "loss.png",
             "sft_eval.json", "dpo_eval.json", "grpo_eval.json", "distill_eval.json", "stage.json")


def clear_run(out: Path) -> None:
    """Delete a run's own files so it can start over. A folder holding anything else is refused:
    --overwrite must never delete a user's files."""
    if not out.exists():
        return
    if not out.is_dir():
        raise MMLabError(f"--out {out} is a file, not a run folder")
    foreign = [p.name for p in out.iterdir() if p.name not in RUN_FILES and not p.name.startswith(".ckpt.tmp-")
               and not (p.name.startswith("recipe_") and p.suffix in (".json", ".png"))]  # `mmlab recipe run`'s
    if foreign:
        raise MMLabError(f"refusing to overwrite {out}: it holds files that are not a run's ({', '.join(foreign[:5])})")
    for p in out.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def build_tokenizer(spec: str, corpus: Corpus, vocab_size: int) -> Tokenizer:
    """``char``: the corpus' characters; ``bpe``: a byte-level BPE of ``vocab_size`` trained on the
    corpus (Hugging Face ``tokenizers``); ``teaching-bpe``: the same algorithm in plain Python
    (slow: for small vocabularies); anything else: a path to a saved tokenizer."""
    if spec == "char":
        specials = [ENDOFTEXT] if corpus.is_documents else []
        return CharTokenizer.from_corpus("".join(corpus.documents), special_tokens=specials)
    if spec == "bpe":
        return train_bpe(corpus.documents, vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS)
    if spec == "teaching-bpe":
        from mmlab.tokenizer.teaching_bpe import TeachingBPE

        return TeachingBPE.train("\n".join(corpus.documents), vocab_size=vocab_size)
    return load_tokenizer(spec)


def prepare_run(
    model_cfg: ModelConfig | str,
    data: str | None,
    train_cfg: TrainConfig,
    tokenizer: str = "auto",
    resume: bool = False,
) -> tuple[MiniMindLM, Tokenizer, PretrainBatches]:
    """Everything the loop needs. On resume the model config, tokenizer and corpus come from the run."""
    saved_sha = None
    if resume:
        try:
            ckpt = resolve_checkpoint(Path(train_cfg.out_dir) / "ckpt")
        except MMLabError:
            raise MMLabError(f"nothing to resume in {train_cfg.out_dir}: no checkpoint (the run stopped before its "
                             "first one); start it again without --resume") from None
        extra = load_trainer_state(ckpt).get("extra", {})
        saved_data, saved_sha = extra.get("data"), extra.get("corpus_sha256")
        if data is not None and saved_data is not None and data != saved_data:
            raise MMLabError(f"{train_cfg.out_dir} was trained on {saved_data!r}; resuming on {data!r} would "
                             "change the run (start a new --out instead)")
        data = data or saved_data
    data = data or "tinyshakespeare"
    corpus = load_corpus(data, seed=train_cfg.seed)
    if saved_sha is not None and corpus.sha256() != saved_sha:
        raise MMLabError(f"the corpus {data!r} changed since {train_cfg.out_dir} was trained on it (different text, "
                         "or another --seed for a synthetic corpus); resuming would change the run")
    if resume:
        cfg = ModelConfig.from_json(ckpt / "config.json")
        tok = load_checkpoint_tokenizer(ckpt)
    else:
        cfg = get_preset(model_cfg) if isinstance(model_cfg, str) else model_cfg
        spec = tokenizer if tokenizer != "auto" else ("char" if cfg.vocab_size < 256 else "bpe")
        tok = build_tokenizer(spec, corpus, cfg.vocab_size)
        cfg = cfg.replace(vocab_size=tok.vocab_size)
    block = train_cfg.block_size or cfg.max_seq_len
    if block > cfg.max_seq_len:
        raise MMLabError(f"block_size={block} is longer than the model's max_seq_len={cfg.max_seq_len}")
    tokens = tokenize_corpus(corpus, tok)
    batches = PretrainBatches(PretrainData.from_tokens(tokens, train_cfg.val_fraction, block, corpus.source), block,
                              train_cfg.batch_size, train_cfg.eval_batches, data_name=data,
                              corpus_sha256=corpus.sha256())
    torch.manual_seed(train_cfg.seed)
    return MiniMindLM(cfg), tok, batches


def pretrain(
    model_cfg: ModelConfig | str,
    data: str | None,
    train_cfg: TrainConfig,
    tokenizer: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    **trainer_kwargs: Any,
) -> TrainResult:
    """Train a model from scratch (or resume) on a corpus; returns losses, time and tokens seen."""
    out = Path(train_cfg.out_dir)
    model, tok, batches = prepare_run(model_cfg, data, train_cfg, tokenizer, resume)
    if overwrite and not resume:
        clear_run(out)  # only once the new run is ready to start
    trainer = Trainer(model, NextTokenLoss(), batches, train_cfg, tokenizer=tok, resume=resume,
                      extra_state={"data": batches.data_name, "corpus_sha256": batches.corpus_sha256},
                      **trainer_kwargs)
    return trainer.fit()
