"""Reading corpora and record files, with errors that name the file and the line.

A *corpus* is text for pretraining: a registered dataset (``tinyshakespeare``), a built-in
synthetic corpus (``synthetic-stories``), or a path to a ``.txt`` file (or ``.jsonl`` with a
``text`` field per line). Document corpora come back as a list of documents.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmlab.data.registry import REGISTRY, DataError, dataset_path, get_dataset


@dataclass
class Corpus:
    name: str  # registry name, synthetic name or file path
    documents: list[str]  # a plain-text corpus is one document
    source: str  # the file it came from, or "synthetic"

    @property
    def is_documents(self) -> bool:
        return len(self.documents) > 1

    def text(self, separator: str = "") -> str:
        return separator.join(self.documents)

    def sha256(self) -> str:
        """Identity of the corpus' content (documents and their boundaries): a cache key, and what
        resume checks to refuse training on changed data."""
        h = hashlib.sha256()
        for doc in self.documents:
            h.update(doc.encode("utf-8"))
            h.update(b"\x00")
        return h.hexdigest()


def read_text(path: str | Path) -> str:
    """UTF-8 text of a file; undecodable bytes are reported with their line and byte offset."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: bytes {raw[e.start:e.end]!r} at offset {e.start} are not valid UTF-8 ({e.reason})"
        ) from None


def iter_jsonl(path: str | Path, with_lines: bool = False) -> Iterator[Any]:
    """Records of a JSON-lines file (or (line number, record) pairs), read line by line (a file of any
    size); a malformed line is an error naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    with open(path, "rb") as f:
        yield from _parse_jsonl(path, f, with_lines)


def _parse_jsonl(path: Path, lines, with_lines: bool) -> Iterator[Any]:
    for lineno, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:{lineno}: bytes {raw[e.start:e.end]!r} at offset {e.start} of the line are not "
                            f"valid UTF-8 ({e.reason})") from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        yield (lineno, record) if with_lines else record


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None


def split_documents(text: str, separator: str, complete_last: bool = False) -> list[str]:
    """Split on ``separator``; the piece after the last separator is dropped unless ``complete_last``
    (a file cut at a byte limit ends mid-document). Empty documents are dropped."""
    pieces = text.split(separator)
    if not complete_last and len(pieces) > 1:
        pieces = pieces[:-1]
    return [p.strip() for p in pieces if p.strip()]


def load_corpus(name_or_path: str, synthetic_chars: int = 400_000, seed: int = 0) -> Corpus:
    """A registered dataset, ``synthetic-stories``, or a .txt / .jsonl path."""
    from mmlab.data.synthetic import SYNTHETIC_CORPORA, story_corpus

    if name_or_path in SYNTHETIC_CORPORA:
        return Corpus(name_or_path, story_corpus(n_chars=synthetic_chars, seed=seed), "synthetic")
    if name_or_path in REGISTRY:
        ds = get_dataset(name_or_path)
        if ds.kind != "text":
            raise DataError(f"dataset {ds.name!r} is {ds.kind} records, not a text corpus for pretraining")
        path = dataset_path(ds.name)
        text = read_text(path)
        docs = split_documents(text, ds.doc_separator) if ds.doc_separator else [text]
        corpus = Corpus(ds.name, docs, str(path))
    else:
        path = Path(name_or_path)
        if not path.exists():
            raise DataError(
                f"{name_or_path!r} is neither a file nor a known corpus; known: "
                f"{', '.join([*SYNTHETIC_CORPORA, *(n for n, d in REGISTRY.items() if d.kind == 'text')])}"
            )
        if path.suffix == ".jsonl":
            docs = []
            for lineno, record in iter_jsonl(path, with_lines=True):
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise DataError(f"{path}:{lineno}: no string field 'text' (MiniMind's pretraining format is "
                                    "one {\"text\": ...} object per line)")
                docs.append(record["text"])
        else:
            text = read_text(path)
            docs = split_documents(text, "<|endoftext|>", complete_last=True) if "<|endoftext|>" in text else [text]
        corpus = Corpus(str(path), docs, str(path))
    if not any(d.strip() for d in corpus.documents):
        raise DataError(f"{corpus.source}: the corpus is empty")
    return corpus


def named_records(path: str | Path) -> list[tuple[str, Any]]:
    """The records of a ``.jsonl`` file or a ``.json`` list, each with its place in the file (``file:line`` or
    ``file[i]``) for messages about it."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return [(f"{path}:{n}", r) for n, r in iter_jsonl(path, with_lines=True)]
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return [(f"{path}[{i}]", r) for i, r in enumerate(data)]
