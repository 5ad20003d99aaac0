"""Sharded token files: a corpus of any size tokenized once, in bounded memory, and read through memmaps.

``build_shards(files, tokenizer)`` streams the corpus (``mmlab.data.stream``) in groups of about
``shard_chars`` characters of text. Each group is tokenized in batches (Hugging Face ``tokenizers``
encodes a batch on all cores with its own threads) and written as one *shard*: a train and a val token
file (uint16 when the vocabulary fits, else uint32), the start offset of every document in each, and a
small JSON record with counts and sha256s. Memory is one group of text and its ids, whatever the corpus'
size.

* **Split by document.** Piece ``i`` of the corpus goes to val when ``floor((i + 1) f) > floor(i f)`` for
  ``f = val_fraction``: exactly every ``1/f``-th piece, spread over the whole corpus, the same on every build.
* **Identity.** The build folder's name is a hash of the inputs' sha256s, the tokenizer's fingerprint and
  the build settings, so a changed input or tokenizer can never reuse old tokens.
* **Resume.** A shard's files are written under temporary names and renamed, its JSON record last. A build
  killed mid-way keeps its finished shards: the next build verifies them, re-reads (without tokenizing)
  the text they hold, and goes on from the first missing shard. A finished build has ``manifest.json`` and
  is reused.
* **Verification.** Opening a build checks every shard's size and sha256 against the manifest: a corrupt
  or truncated shard is reported by name, never trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmlab.data.registry import DataError, cache_dir
from mmlab.data.registry import sha256_file as file_sha256
from mmlab.data.stream import MAX_PIECE_CHARS, Piece, iter_pieces
from mmlab.tokenizer.base import ENDOFTEXT, Tokenizer, fingerprint

FORMAT = 1
SPLITS = ("train", "val")
MANIFEST = "manifest.json"
ENCODE_BATCH_CHARS = 1 << 20  # text per encode_batch call: bounds the tokenizer's transient memory


def inputs_identity(files: list[Path]) -> list[dict]:
    """Path, size and sha256 of every input file (one streaming pass over the bytes)."""
    return [{"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files]


def build_key(inputs: list[dict], tokenizer: Tokenizer, settings: dict) -> str:
    h = hashlib.sha256(json.dumps({"format": FORMAT, "inputs": [i["sha256"] for i in inputs], "settings": settings,
                                   "tokenizer": fingerprint(tokenizer)}, sort_keys=True).encode())
    return h.hexdigest()[:24]


def is_val(i: int, val_fraction: float) -> bool:
    return int((i + 1) * val_fraction) > int(i * val_fraction)


def _atomic_write(path: Path, write: Callable) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(array)).cast("B")).hexdigest()


def _groups(pieces: Iterator[Piece], shard_chars: int) -> Iterator[list[Piece]]:
    group, size = [], 0
    for piece in pieces:
        group.append(piece)
        size += len(piece.text)
        if size >= shard_chars:
            yield group
            group, size = [], 0
    if group:
        yield group


_WORKER_ENCODING = None


def _init_worker(spec: dict) -> None:
    global _WORKER_ENCODING
    from mmlab.tokenizer.fast import tiktoken_encoding

    _WORKER_ENCODING = tiktoken_encoding(spec)


def _encode_texts(encode: Callable[[list[str]], list[list[int]]], texts: list[str], ends: list[bool],
                  eot: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """All ids of ``texts`` in one flat array (end-of-text after a document's last piece) and each one's length."""
    ids = encode(texts)
    for seq, end in zip(ids, ends, strict=True):
        if end:
            seq.append(eot)
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter((i for seq in ids for i in seq), dtype=dtype, count=int(lengths.sum()))
    return flat, lengths


def _worker_encode(texts: list[str], ends: list[bool], eot: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    enc = _WORKER_ENCODING
    return _encode_texts(lambda ts: [enc.encode(t, allowed_special="all") for t in ts], texts, ends, eot, dtype)


class _Encoder:
    """Pieces -> token ids, in batches of about 1 MB of text; the end-of-text id after each document's last piece.

    A plain byte-level BPE is encoded by ``tiktoken`` in ``workers`` processes once it has matched
    ``tokenizers`` on the build's first batch; any other tokenizer by its own batch encoder (Hugging Face
    ``tokenizers`` uses its own threads) or one text at a time. ``name`` says which ran."""

    def __init__(self, tokenizer: Tokenizer, dtype: np.dtype, workers: int):
        self.tok, self.dtype, self.workers = tokenizer, np.dtype(dtype), max(1, workers)
        self.eot = tokenizer.token_to_id(ENDOFTEXT)
        if self.eot is None:
            raise DataError(f"the tokenizer has no {ENDOFTEXT} token, which a streamed corpus needs between documents")
        hf = getattr(tokenizer, "hf", None)
        if hf is not None and hasattr(hf, "encode_batch_fast"):  # ids only: no offsets computed
            self._reference = lambda texts: [e.ids for e in hf.encode_batch_fast(texts, add_special_tokens=False)]
            self.name = "tokenizers"
        elif hasattr(tokenizer, "encode_batch"):
            self._reference, self.name = tokenizer.encode_batch, "encode_batch"
        else:
            self._reference, self.name = (lambda texts: [tokenizer.encode(t) for t in texts]), "encode"
        spec = tokenizer.tiktoken_spec() if hasattr(tokenizer, "tiktoken_spec") else None
        self._spec = spec
        self._pool = None
        self._checked = spec is None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _batches(self, pieces: list[Piece]) -> Iterator[list[Piece]]:
        start = 0
        while start < len(pieces):
            stop, size = start, 0
            while stop < len(pieces) and (size < ENCODE_BATCH_CHARS or stop == start):
                size += len(pieces[stop].text)
                stop += 1
            yield pieces[start:stop]
            start = stop

    def _use_tiktoken(self, sample: list[Piece]) -> None:
        """Switch to tiktoken if it is installed and gives exactly the reference's ids on ``sample``."""
        from mmlab.tokenizer.fast import tiktoken_encoding

        self._checked = True
        enc = tiktoken_encoding(self._spec)
        texts = [p.text for p in sample]
        if enc is None or [enc.encode(t, allowed_special="all") for t in texts] != self._reference(texts):
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # fork, not spawn: a user's script without an `if __name__ == "__main__"` guard must work too; the
        # children run tiktoken alone (never torch), so the parent's threads cannot deadlock them
        self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"),
                                         initializer=_init_worker, initargs=(self._spec,))
        self.name = f"tiktoken x {self.workers} processes"

    def submit(self, pieces: list[Piece]) -> Callable[[], list[np.ndarray]]:
        """Start encoding ``pieces``; the returned function waits for and returns their ids. With worker
        processes the encoding runs while the caller reads the next group."""
        batches = list(self._batches(pieces))
        if not self._checked and batches:
            self._use_tiktoken(batches[0])
        if self._pool is not None:
            futures = [self._pool.submit(_worker_encode, [p.text for p in b], [p.ends_document for p in b],
                                         self.eot, self.dtype.name) for b in batches]
            results = lambda: (f.result() for f in futures)  # noqa: E731
        else:
            results = lambda: (_encode_texts(self._reference, [p.text for p in b], [p.ends_document for p in b],  # noqa: E731
                                             self.eot, self.dtype.name) for b in batches)

        def wait() -> list[np.ndarray]:
            out: list[np.ndarray] = []
            for flat, lengths in results():
                out.extend(np.split(flat, np.cumsum(lengths)[:-1]))
            return out

        return wait


@dataclass
class ShardedCorpus:
    """A finished build: per shard and split, a token memmap and its documents' start offsets."""

    root: Path
    manifest: dict
    tokens: dict[str, list[np.ndarray]]  # split -> one memmap per shard (empty shards left out)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.manifest["dtype"])

    def n_tokens(self, split: str) -> int:
        return int(sum(len(t) for t in self.tokens[split]))

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @classmethod
    def open(cls, root: Path, verify: bool = True) -> ShardedCorpus:
        manifest_path = root / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{manifest_path}: cannot read the shard manifest ({e})") from None
        dtype = np.dtype(manifest["dtype"])
        tokens: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        for shard in manifest["shards"]:
            for split in SPLITS:
                info = shard[split]
                path = root / info["file"]
                _check_file(path, info["tokens"] * dtype.itemsize, info["sha256"] if verify else None)
                if info["tokens"]:
                    tokens[split].append(np.memmap(path, dtype=dtype, mode="r", shape=(info["tokens"],)))
        return cls(root, manifest, tokens)


def _check_file(path: Path, size: int, sha256: str | None) -> None:
    if not path.is_file():
        raise DataError(f"{path}: shard file missing (delete {path.parent} to rebuild it)")
    if path.stat().st_size != size:
        raise DataError(f"{path}: {path.stat().st_size:,} bytes, the manifest says {size:,} (truncated or "
                        f"replaced; delete {path.parent} to rebuild it)")
    if sha256 is not None and file_sha256(path) != sha256:
        raise DataError(f"{path}: sha256 does not match the manifest (a corrupt shard; delete {path.parent} to "
                        "rebuild it)")


def _finished_shard(root: Path, index: int, dtype: np.dtype) -> dict | None:
    """The record of shard ``index`` if a previous build finished it and its files are intact."""
    record = root / f"{index:05d}.json"
    if not record.is_file():
        return None
    try:
        info = json.loads(record.read_text())
        for split in SPLITS:
            _check_file(root / info[split]["file"], info[split]["tokens"] * dtype.itemsize, info[split]["sha256"])
    except (ValueError, KeyError, TypeError, DataError):
        return None  # torn or damaged: build it again
    return info


def build_shards(
    files: list[Path],
    tokenizer: Tokenizer,
    out: Path | None = None,
    val_fraction: float = 0.01,
    shard_chars: int = 32 << 20,
    field: str = "text",
    max_piece_chars: int = MAX_PIECE_CHARS,
    progress: Callable[[dict], None] | None = None,
    inputs: list[dict] | None = None,
    workers: int | None = None,
) -> ShardedCorpus:
    """Tokenize ``files`` into shards under ``out`` (default: the data cache), or reuse a finished build.

    ``progress`` gets a dict after every shard (text MB read, MB/s, tokens, shards reused)."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction={val_fraction} must be in [0, 1)")
    inputs = inputs or inputs_identity(files)
    settings = {"val_fraction": val_fraction, "shard_chars": shard_chars, "field": field,
                "max_piece_chars": max_piece_chars}
    key = build_key(inputs, tokenizer, settings)
    root = Path(out) if out is not None else cache_dir() / "shards" / key
    if (root / MANIFEST).is_file():
        try:
            their_key = json.loads((root / MANIFEST).read_text()).get("key")
        except (OSError, ValueError, AttributeError):
            their_key = None
        if their_key != key:
            raise DataError(f"{root} holds a build of other inputs or another tokenizer; use another folder")
        return ShardedCorpus.open(root)
    root.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32)
    encode = _Encoder(tokenizer, dtype, workers or os.cpu_count() or 1)
    try:
        return _build(files, tokenizer, root, key, inputs, settings, encode, dtype, progress)
    finally:
        encode.close()


def _build(files, tokenizer, root, key, inputs, settings, encode, dtype, progress) -> ShardedCorpus:
    val_fraction, shard_chars = settings["val_fraction"], settings["shard_chars"]
    field, max_piece_chars = settings["field"], settings["max_piece_chars"]
    shards, piece_index, chars, reused = [], 0, 0, 0
    in_flight: deque = deque()  # groups being encoded: the next one is read while the workers run
    t0 = time.perf_counter()

    def finish_oldest() -> None:
        nonlocal chars
        index, first, n_pieces, ends, group_chars, where, info, wait = in_flight.popleft()
        if info is None:
            info = _write_shard(root, index, first, n_pieces, ends, where, wait(), val_fraction, dtype)
        shards.append(info)
        chars += group_chars
        if progress is not None:
            dt = time.perf_counter() - t0
            progress({"shards": len(shards), "reused": reused, "encoder": encode.name, "text_mb": chars / 1e6,
                      "mb_per_s": chars / 1e6 / dt,
                      "tokens": sum(s["train"]["tokens"] + s["val"]["tokens"] for s in shards)})

    for index, group in enumerate(_groups(iter_pieces(files, field, max_piece_chars), shard_chars)):
        info = _finished_shard(root, index, dtype)
        if info is not None and info["first_piece"] == piece_index and info["pieces"] == len(group):
            reused += 1
            wait = None
        else:
            info, wait = None, encode.submit(group)
        in_flight.append((index, piece_index, len(group), [p.ends_document for p in group],
                          sum(len(p.text) for p in group), group[0].where, info, wait))
        piece_index += len(group)
        del group
        while len(in_flight) > 1:
            finish_oldest()
    while in_flight:
        finish_oldest()
    if not shards or not any(s["train"]["tokens"] for s in shards):
        raise DataError(f"{', '.join(map(str, files[:3]))}: the corpus is empty (no text to train on)")
    if val_fraction > 0 and not any(s["val"]["tokens"] for s in shards):
        raise DataError(f"{files[0]}: {piece_index} documents are too few to hold out val_fraction={val_fraction} "
                        "of them by document; use a larger corpus or a larger val fraction")
    manifest = {
        "format": FORMAT, "key": key, "inputs": inputs, "settings": settings, "dtype": dtype.name,
        "tokenizer": {"fingerprint": fingerprint(tokenizer), "vocab_size": tokenizer.vocab_size},
        "documents": {s: sum(x[s]["documents"] for x in shards) for s in SPLITS},
        "tokens": {s: sum(x[s]["tokens"] for x in shards) for s in SPLITS},
        "text_chars": chars, "pieces": piece_index, "shards": shards,
        "build_seconds": round(time.perf_counter() - t0, 2), "reused_shards": reused, "encoder": encode.name,
    }
    _atomic_write(root / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
    return ShardedCorpus.open(root, verify=False)  # every shard was just verified or written


def _write_shard(root: Path, index: int, first_piece: int, n_pieces: int, ends: list[bool], where: str,
                 ids: list[np.ndarray], val_fraction: float, dtype: np.dtype) -> dict:
    info: dict = {"first_piece": first_piece, "pieces": n_pieces, "where": where}
    for split in SPLITS:
        mine = [i for i in range(n_pieces) if is_val(first_piece + i, val_fraction) == (split == "val")]
        lengths = np.fromiter((len(ids[i]) for i in mine), dtype=np.int64, count=len(mine))
        starts = (np.cumsum(lengths) - lengths).astype(np.uint64)
        tokens = np.concatenate([ids[i] for i in mine]) if mine else np.zeros(0, dtype)
        name = f"{index:05d}.{split}"
        _atomic_write(root / f"{name}.bin", tokens.tofile)
        _atomic_write(root / f"{name}.idx", starts.tofile)  # where each piece (a document or part of one) starts
        info[split] = {"file": f"{name}.bin", "index": f"{name}.idx", "tokens": int(tokens.size),
                       "documents": sum(ends[i] for i in mine), "sha256": _sha(tokens)}
    _atomic_write(root / f"{index:05d}.json", lambda f: f.write(json.dumps(info).encode()))
    return info


class ShardWindows:
    """Training windows over a sharded corpus, read through the memmaps.

    Each split is cut into non-overlapping windows of ``block_size + 1`` tokens (``y`` is ``x`` shifted by
    one), inside a shard. Training visits the train windows in a shuffled order, every window once per
    epoch (the order of epoch ``e`` is a permutation seeded by ``(seed, e)``): ``position`` counts the windows
    drawn, so a resumed run goes on from the same place (``state_dict``), and ``epochs`` is exact.
    Evaluation draws fixed random windows, the same every time."""

    def __init__(self, corpus: ShardedCorpus, block_size: int, seed: int = 0, source: str = "the corpus",
                 eval_batch_size: int = 8, n_eval_batches: int = 4, data_name: str = ""):
        self.corpus, self.block, self.seed, self.position = corpus, block_size, seed, 0
        self.data_name, self.corpus_sha256 = data_name or source, corpus.key  # what resume checks
        self._windows: dict[str, np.ndarray] = {}
        for split in SPLITS:
            self._windows[split] = np.cumsum([max(0, (len(t) - 1) // block_size) for t in corpus.tokens[split]],
                                             dtype=np.int64)
        if self.n_windows("train") == 0 or (corpus.manifest["settings"]["val_fraction"] > 0 and
                                            self.n_windows("val") == 0):
            raise DataError(f"{source}: {corpus.n_tokens('train'):,} train and {corpus.n_tokens('val'):,} val tokens "
                            f"are too few for block_size={block_size}; use a smaller --block-size or more data")
        self._order: tuple[int, np.ndarray] | None = None
        import torch

        g = torch.Generator().manual_seed(1234)  # fixed windows: evaluations comparable over the run
        self._eval = {split: [self.random(split, eval_batch_size, g) for _ in range(n_eval_batches)]
                      for split in SPLITS if self.n_windows(split)}

    # the trainer's BatchSource
    def sample(self, split: str, rows: int, generator):
        return self.next_train(rows) if split == "train" else self.random(split, rows, generator)

    def slice_rows(self, batch, start: int, stop: int):
        return tuple(t[start:stop] for t in batch)

    def eval_batches(self, split: str):
        return self._eval.get(split, [])

    def n_windows(self, split: str) -> int:
        w = self._windows[split]
        return int(w[-1]) if len(w) else 0

    @property
    def epochs(self) -> float:
        return self.position / self.n_windows("train")

    def state_dict(self) -> dict:
        return {"position": self.position, "block_size": self.block, "seed": self.seed, "key": self.corpus.key}

    def load_state_dict(self, state: dict) -> None:
        if state.get("key") != self.corpus.key or state.get("block_size") != self.block:
            raise DataError("the checkpoint's data position belongs to another corpus build or block size")
        self.position = int(state["position"])

    def _window(self, split: str, g: int) -> np.ndarray:
        cum = self._windows[split]
        shard = int(np.searchsorted(cum, g, side="right"))
        local = g - (int(cum[shard - 1]) if shard else 0)
        start = local * self.block
        return self.corpus.tokens[split][shard][start:start + self.block + 1]

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            n = self.n_windows("train")
            perm = np.random.default_rng([self.seed, epoch]).permutation(n)
            self._order = (epoch, perm.astype(np.uint32 if n < 2**32 else np.int64))
        return self._order[1]

    def next_train(self, rows: int):
        n = self.n_windows("train")
        picks = []
        for _ in range(rows):
            epoch, i = divmod(self.position, n)
            picks.append(int(self._permutation(epoch)[i]))
            self.position += 1
        return self._stack("train", picks)

    def random(self, split: str, rows: int, generator):
        import torch

        picks = torch.randint(self.n_windows(split), (rows,), generator=generator).tolist()
        return self._stack(split, picks)

    def _stack(self, split: str, picks: list[int]):
        import torch

        windows = torch.from_numpy(np.stack([self._window(split, g) for g in picks]).astype(np.int64))
        return windows[:, :-1], windows[:, 1:]
