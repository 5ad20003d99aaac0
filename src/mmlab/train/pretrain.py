"""Pretraining: corpus -> tokenizer -> cached tokens -> model -> the training loop."""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmlab.config import ModelConfig, get_preset
from mmlab.data.corpus import Corpus, load_corpus
from mmlab.data.pretrain import PretrainData, tokenize_corpus
from mmlab.data.shards import ShardWindows, build_shards
from mmlab.data.stream import is_stream_spec, resolve_sources
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


STREAM_ABOVE_BYTES = 32 << 20  # files larger than this (in all) are streamed into shards, not read into memory
TOKENIZER_SAMPLE_CHARS = 64 << 20  # a streamed corpus' BPE is trained on its first 64 MiB of text


def wants_stream(data: str, stream: bool | None) -> bool:
    """Stream ``data`` into shards? Yes for a folder, a glob, parquet, or more than STREAM_ABOVE_BYTES of files;
    ``stream`` (``--stream`` / ``--no-stream``) overrides. Registered and synthetic corpora are small: in memory."""
    if not is_stream_spec(data):
        return False
    if stream is not None:
        return stream
    files = resolve_sources(data)
    return (Path(data).is_dir() or len(files) > 1 or any(f.suffix == ".parquet" for f in files)
            or sum(f.stat().st_size for f in files) > STREAM_ABOVE_BYTES)


STREAM_BUILD_TIMEOUT_S = 6 * 3600


def stream_source(data: str, stream: bool | None) -> str:
    """What to stream for ``data``: the file of a hub corpus (GBs: always streamed unless ``--no-stream``) or,
    with ``--stream``, of a small registered one; anything else is returned as given."""
    from mmlab.data.registry import REGISTRY, HubFile, dataset_path

    if is_stream_spec(data) or data not in REGISTRY or stream is False:
        return data
    if isinstance(REGISTRY[data], HubFile) or stream:
        return str(dataset_path(data))
    return data


def stream_tokenizer(spec: str, files: list[Path], vocab_size: int) -> Tokenizer:
    """A tokenizer for a streamed corpus: ``bpe`` trained on its first TOKENIZER_SAMPLE_CHARS of text, ``char``
    from every character in it (one pass), or a saved tokenizer."""
    from mmlab.data.stream import iter_pieces

    def sample():
        seen = 0
        for piece in iter_pieces(files):
            yield piece.text
            seen += len(piece.text)
            if seen >= TOKENIZER_SAMPLE_CHARS:
                return

    if spec == "bpe":
        return train_bpe(sample(), vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS)
    if spec == "char":
        chars: set[str] = set()
        for piece in iter_pieces(files):
            chars.update(piece.text)
        return CharTokenizer(sorted(chars), special_tokens=[ENDOFTEXT])
    if spec == "teaching-bpe":
        raise MMLabError("the teaching BPE is plain Python, too slow for a streamed corpus: use --tokenizer bpe")
    return load_tokenizer(spec)


def _shared(dist: Any, make: Any) -> Tokenizer:
    """``make()`` on rank 0, the same tokenizer on every rank (sent as its saved file): ranks that trained their
    own could disagree, and then read different token ids from differently keyed shards."""
    if not dist.enabled:
        return make()
    import tempfile

    import torch.distributed as torch_dist

    payload: list[Any] = [None]
    if dist.is_main:
        tok = make()
        with tempfile.TemporaryDirectory() as d:
            path = tok.save(d)
            payload = [(path.name, path.read_text(encoding="utf-8"))]
    torch_dist.broadcast_object_list(payload, src=0)
    if dist.is_main:
        return tok
    name, text = payload[0]
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / name).write_text(text, encoding="utf-8")
        return load_tokenizer(d)


def prepare_stream(data: str, tok_spec: str | Tokenizer, cfg: ModelConfig, train_cfg: TrainConfig, block: int,
                   saved_key: str | None = None) -> tuple[Tokenizer, ShardWindows]:
    from mmlab.train import distributed

    files = resolve_sources(data)
    # under torchrun: rank 0 trains the tokenizer and builds the shards while the others wait (for hours on a
    # first build of GBs, hence the timeout); every rank must see the same data cache (one machine, or a shared
    # MMLAB_DATA_DIR), or the others would build their own
    dist = distributed.setup(timeout_s=STREAM_BUILD_TIMEOUT_S)
    if dist.enabled:
        dist.device(train_cfg.device)  # nccl's collectives need each rank's own GPU
    if isinstance(tok_spec, str):
        tok = _shared(dist, lambda: stream_tokenizer(tok_spec, files, cfg.vocab_size))
    else:
        tok = tok_spec
    if dist.enabled and not dist.is_main:
        dist.barrier()  # wait for rank 0's shards, then open (reuse) them
    t0 = time.perf_counter()

    def report(p: dict) -> None:
        if train_cfg.progress:
            print(f"tokenizing {data}: {p['text_mb']:,.0f} MB ({p['mb_per_s']:.1f} MB/s, {p['tokens']:,} tokens, "
                  f"{p['shards']} shards, {p['reused']} reused; {p['encoder']})", file=sys.stderr, flush=True)

    corpus = build_shards(files, tok, val_fraction=train_cfg.val_fraction, progress=report)
    if dist.enabled and dist.is_main:
        dist.barrier()
    if saved_key is not None and corpus.key != saved_key:
        raise MMLabError(f"the corpus {data!r} changed since {train_cfg.out_dir} was trained on it (its files' "
                         "sha256 differ); resuming would change the run")
    if train_cfg.progress:
        m = corpus.manifest
        print(f"{data}: {m['tokens']['train']:,} train / {m['tokens']['val']:,} val tokens in {len(m['shards'])} "
              f"shards ({corpus.root}; {time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
    windows = ShardWindows(corpus, block, seed=train_cfg.seed, source=data, eval_batch_size=train_cfg.batch_size,
                           n_eval_batches=train_cfg.eval_batches, data_name=data)
    return tok, windows


def prepare_run(
    model_cfg: ModelConfig | str,
    data: str | None,
    train_cfg: TrainConfig,
    tokenizer: str = "auto",
    resume: bool = False,
    stream: bool | None = None,
) -> tuple[MiniMindLM, Tokenizer, PretrainBatches | ShardWindows]:
    """Everything the loop needs. On resume the model config, tokenizer and corpus come from the run.
    Large corpora (see ``wants_stream``) are streamed into sharded token files in bounded memory."""
    saved_sha = None
    if resume:
        try:
            ckpt = resolve_checkpoint(Path(train_cfg.out_dir) / "ckpt")
        except MMLabError:
            raise MMLabError(f"nothing to resume in {train_cfg.out_dir}: no checkpoint (the run stopped before its "
                             "first one); start it again without --resume") from None
        extra = load_trainer_state(ckpt).get("extra", {})
        saved_data, saved_sha = extra.get("data"), extra.get("corpus_sha256")
        if stream is None:
            stream = extra.get("stream")  # a run streamed (or not) goes on the same way
        if data is not None and saved_data is not None and data != saved_data:
            raise MMLabError(f"{train_cfg.out_dir} was trained on {saved_data!r}; resuming on {data!r} would "
                             "change the run (start a new --out instead)")
        data = data or saved_data
    data = data or "tinyshakespeare"
    source = stream_source(data, stream)
    if wants_stream(source, stream if stream is not None else (True if source != data else None)):
        if resume:
            cfg = ModelConfig.from_json(ckpt / "config.json")
            tok_spec: str | Tokenizer = load_checkpoint_tokenizer(ckpt)
        else:
            cfg = get_preset(model_cfg) if isinstance(model_cfg, str) else model_cfg
            tok_spec = tokenizer if tokenizer != "auto" else ("char" if cfg.vocab_size < 256 else "bpe")
        block = train_cfg.block_size or cfg.max_seq_len
        if block > cfg.max_seq_len:
            raise MMLabError(f"block_size={block} is longer than the model's max_seq_len={cfg.max_seq_len}")
        tok, windows = prepare_stream(source, tok_spec, cfg, train_cfg, block, saved_key=saved_sha)
        torch.manual_seed(train_cfg.seed)
        return MiniMindLM(cfg.replace(vocab_size=tok.vocab_size)), tok, windows
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
    stream: bool | None = None,
    **trainer_kwargs: Any,
) -> TrainResult:
    """Train a model from scratch (or resume) on a corpus; returns losses, time and tokens seen."""
    out = Path(train_cfg.out_dir)
    model, tok, batches = prepare_run(model_cfg, data, train_cfg, tokenizer, resume, stream)
    if overwrite and not resume:
        clear_run(out)  # only once the new run is ready to start
    trainer = Trainer(model, NextTokenLoss(), batches, train_cfg, tokenizer=tok, resume=resume,
                      extra_state={"data": batches.data_name, "corpus_sha256": batches.corpus_sha256,
                                   "stream": isinstance(batches, ShardWindows)},
                      **trainer_kwargs)
    return trainer.fit()
