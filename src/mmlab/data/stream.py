"""Reading corpora of any size as a stream of documents, in bounded memory.

A source is a file (``.txt``, ``.jsonl``, ``.parquet``), a folder (every such file under it, in sorted
order) or a glob (``data/*.jsonl``). Documents come out one at a time, each with the place it came from
(``file:line`` for JSON lines, ``file#row`` for parquet), so nothing ever holds the whole corpus:

* ``.txt``: read in 8 MiB blocks and split on ``<|endoftext|>``. A file without that separator is one
  long document.
* ``.jsonl``: one JSON object per line with a string field (``text`` by default, MiniMind's
  ``pretrain_hq.jsonl`` format); a malformed line is an error naming ``file:line``.
* ``.parquet``: a string column (``text`` by default), read in record batches with ``pyarrow``
  (FineWeb-Edu's and Hugging Face datasets' format).

A document longer than ``max_piece_chars`` is emitted as several *pieces*, cut after a newline (or a
space) where one is near, so one huge document never sits in memory whole. Only a document's last
piece carries ``ends_document=True``: the end-of-text token goes after it alone.
"""

from __future__ import annotations

import codecs
import glob
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mmlab.data.registry import DataError
from mmlab.tokenizer.base import ENDOFTEXT

SUFFIXES = (".txt", ".jsonl", ".parquet")
BLOCK_CHARS = 8 << 20
MAX_PIECE_CHARS = 1 << 20


@dataclass(frozen=True)
class Piece:
    text: str
    where: str  # file:line, file#row, or file@char-offset: where the piece starts
    ends_document: bool  # the end-of-text token follows this piece


def resolve_sources(spec: str | Path | list) -> list[Path]:
    """The files a data spec names: a file, a folder (its .txt/.jsonl/.parquet files, recursively, sorted),
    a glob, or a list of those. Errors name what matched nothing."""
    if isinstance(spec, (list, tuple)):
        return [p for s in spec for p in resolve_sources(s)]
    text = str(spec)
    path = Path(text)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise DataError(f"{path}: the folder holds no {', '.join(SUFFIXES)} files")
    elif glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"{text}: the pattern matches no file")
    else:
        raise DataError(f"file not found: {path}")
    bad = [p for p in files if p.suffix not in SUFFIXES]
    if bad:
        raise DataError(f"{bad[0]}: unsupported corpus format {bad[0].suffix!r} (use {', '.join(SUFFIXES)})")
    return files


def is_stream_spec(spec: str) -> bool:
    """True when ``spec`` names files (a path, folder or glob) rather than a registered or synthetic corpus."""
    return Path(spec).exists() or glob.has_magic(spec)


def _cut(text: str, limit: int) -> int:
    """Where to cut ``text`` (longer than ``limit``): after the last newline, else space, in its second half."""
    for sep in ("\n", " "):
        i = text.rfind(sep, limit // 2, limit)
        if i >= 0:
            return i + 1
    return limit


def _split_long(text: str, where: str, ends: bool, limit: int) -> Iterator[Piece]:
    while len(text) > limit:
        i = _cut(text, limit)
        yield Piece(text[:i], where, False)
        text = text[i:]
    yield Piece(text, where, ends)


def _text_blocks(path: Path) -> Iterator[str]:
    """A file's text in blocks of about BLOCK_CHARS; bytes that are not UTF-8 are an error naming the line."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    newlines = 0
    with open(path, "rb") as f:
        while True:
            raw = f.read(BLOCK_CHARS)
            try:  # the incremental decoder keeps a character cut at the block's end for the next block
                block = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                line = newlines + raw[: max(e.start, 0)].count(b"\n") + 1
                raise DataError(f"{path}:{line}: bytes {e.object[e.start:e.end]!r} are not valid UTF-8 "
                                f"({e.reason})") from None
            if block:
                newlines += block.count("\n")
                yield block
            if not raw:
                return


def _txt_pieces(path: Path, limit: int) -> Iterator[Piece]:
    """Documents of a text file split on <|endoftext|> (stripped of surrounding whitespace); a file without
    the separator is one document, kept exactly."""
    pending, line, saw_separator, at_start = "", 1, False, True
    for block in _text_blocks(path):
        pending += block
        *docs, pending = pending.split(ENDOFTEXT)
        for doc in docs:
            saw_separator = True
            text = doc.strip() if at_start else doc.rstrip()
            if text:
                yield from _split_long(text, f"{path}:{line}", True, limit)
            line += doc.count("\n")
            at_start = True
        # a long document: emit its full pieces now (keeping enough for a separator cut at the block's end)
        while len(pending) > limit + len(ENDOFTEXT):
            if at_start and saw_separator:  # a document's leading whitespace is dropped, as .strip() does
                stripped = pending.lstrip()
                line += pending[: len(pending) - len(stripped)].count("\n")
                pending = stripped
            i = _cut(pending, limit)
            yield Piece(pending[:i], f"{path}:{line}", False)
            line += pending[:i].count("\n")
            pending, at_start = pending[i:], False
    tail = (pending.strip() if at_start else pending.rstrip()) if saw_separator else pending
    if tail.strip():
        yield Piece(tail, f"{path}:{line}", True)


def _jsonl_pieces(path: Path, field: str, limit: int) -> Iterator[Piece]:
    from mmlab.data.corpus import iter_jsonl

    for lineno, record in iter_jsonl(path, with_lines=True):
        text = record.get(field)
        if not isinstance(text, str):
            raise DataError(f"{path}:{lineno}: no string field {field!r} (fields: {', '.join(record)[:80]})")
        if text.strip():
            yield from _split_long(text, f"{path}:{lineno}", True, limit)


def _parquet_pieces(path: Path, field: str, limit: int) -> Iterator[Piece]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow (pip install 'minimind-lab[data]')") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid (and others) on a file that is not parquet
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    if field not in pf.schema_arrow.names:
        raise DataError(f"{path}: no column {field!r} (columns: {', '.join(pf.schema_arrow.names)})")
    row = 0
    for batch in pf.iter_batches(columns=[field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text is not None and not isinstance(text, str):
                raise DataError(f"{path}#{row}: column {field!r} holds {type(text).__name__}, not text")
            if text and text.strip():
                yield from _split_long(text, f"{path}#{row}", True, limit)
            row += 1


def iter_pieces(files: list[Path], field: str = "text", max_piece_chars: int = MAX_PIECE_CHARS) -> Iterator[Piece]:
    """Every piece of every file, in order."""
    for path in files:
        if path.suffix == ".jsonl":
            yield from _jsonl_pieces(path, field, max_piece_chars)
        elif path.suffix == ".parquet":
            yield from _parquet_pieces(path, field, max_piece_chars)
        else:
            yield from _txt_pieces(path, max_piece_chars)
