"""Streamed, sharded tokenization: determinism, resume after a kill, corrupt shards, changed inputs, formats."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mmlab.data.registry import DataError
from mmlab.data.shards import ShardedCorpus, ShardWindows, build_shards
from mmlab.data.stream import iter_pieces, resolve_sources
from mmlab.tokenizer.bpe import train_bpe

STORY = "Once upon a time, a little {} named {} found a {} in the park. She was very happy.\n"


def corpus_text(n_docs: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    words = ["girl", "boy", "dog", "cat", "ball", "tree", "Lily", "Tom", "box", "star"]
    return "".join(STORY.format(*rng.choice(words, 3)) * int(rng.integers(1, 4)) + "<|endoftext|>\n"
                   for _ in range(n_docs))


@pytest.fixture(scope="module")
def tok():
    return train_bpe([corpus_text(200)], vocab_size=340)


def test_txt_pieces_match_the_in_memory_reader_and_long_documents_are_cut(tmp_path):
    from mmlab.data.corpus import load_corpus

    (tmp_path / "a.txt").write_text(corpus_text(300))
    assert [p.text for p in iter_pieces([tmp_path / "a.txt"])] == load_corpus(str(tmp_path / "a.txt")).documents
    (tmp_path / "long.txt").write_text("word " * 5000)
    pieces = list(iter_pieces([tmp_path / "long.txt"], max_piece_chars=1000))
    assert "".join(p.text for p in pieces) == "word " * 5000
    assert [p.ends_document for p in pieces] == [False] * (len(pieces) - 1) + [True]
    assert max(len(p.text) for p in pieces) <= 1000


def test_bad_records_are_named_by_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON"):
        list(iter_pieces([bad]))
    bad.write_text('{"text": "fine"}\n{"body": "x"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: no string field 'text'"):
        list(iter_pieces([bad]))
    raw = tmp_path / "raw.txt"
    raw.write_bytes(b"line one\nline two \xff\n")
    with pytest.raises(DataError, match=r"raw.txt:2: .*not valid UTF-8"):
        list(iter_pieces([raw]))
    with pytest.raises(DataError, match="matches no file"):
        resolve_sources(str(tmp_path / "*.parquet"))


def test_build_is_deterministic_split_by_document_and_matches_the_tokenizer(tmp_path, tok):
    (tmp_path / "a.txt").write_text(corpus_text(400))
    one = build_shards([tmp_path / "a.txt"], tok, out=tmp_path / "one", val_fraction=0.1, shard_chars=4000, workers=1)
    two = build_shards([tmp_path / "a.txt"], tok, out=tmp_path / "two", val_fraction=0.1, shard_chars=4000, workers=2)
    assert one.key == two.key and len(one.manifest["shards"]) > 3
    for split in ("train", "val"):
        assert np.array_equal(np.concatenate(one.tokens[split]), np.concatenate(two.tokens[split]))
    assert one.manifest["documents"] == {"train": 360, "val": 40}  # exactly every 10th document
    docs = [p.text for p in iter_pieces([tmp_path / "a.txt"])]
    eot = tok.token_to_id("<|endoftext|>")
    expected = np.concatenate([tok.encode(d) + [eot] for i, d in enumerate(docs) if (i + 1) % 10])
    assert np.array_equal(np.concatenate(one.tokens["train"]), expected)


def test_a_killed_build_resumes_to_the_same_shards(tmp_path, tok):
    (tmp_path / "a.txt").write_text(corpus_text(3000))
    tok.save(tmp_path / "tok")
    script = (f"import sys; from pathlib import Path; from mmlab.tokenizer.base import load_tokenizer\n"
              f"from mmlab.data.shards import build_shards\n"
              f"build_shards([Path({str(tmp_path / 'a.txt')!r})], load_tokenizer({str(tmp_path / 'tok')!r}), "
              f"out=Path({str(tmp_path / 'killed')!r}), shard_chars=2000, workers=1, "
              f"progress=lambda p: __import__('time').sleep(0.2))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], env=os.environ | {"PYTHONPATH": "src"})
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "00002.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "manifest.json").exists()
    resumed = build_shards([tmp_path / "a.txt"], tok, out=tmp_path / "killed", shard_chars=2000, workers=1)
    assert resumed.manifest["reused_shards"] >= 3
    fresh = build_shards([tmp_path / "a.txt"], tok, out=tmp_path / "fresh", shard_chars=2000, workers=1)
    assert [s["train"]["sha256"] for s in resumed.manifest["shards"]] == \
        [s["train"]["sha256"] for s in fresh.manifest["shards"]]


def test_a_corrupt_shard_and_a_changed_input_are_detected(tmp_path, tok):
    src = tmp_path / "a.txt"
    src.write_text(corpus_text(300))
    built = build_shards([src], tok, out=tmp_path / "b", shard_chars=3000)
    shard = built.root / built.manifest["shards"][1]["train"]["file"]
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="sha256 does not match"):
        ShardedCorpus.open(built.root)
    src.write_text(corpus_text(300, seed=1))  # a changed input gets another build, never the old tokens
    key_new = build_shards([src], tok, out=tmp_path / "c", shard_chars=3000).key
    assert key_new != built.key
    with pytest.raises(DataError, match="other inputs"):
        build_shards([src], tok, out=tmp_path / "b", shard_chars=3000)


def test_jsonl_and_parquet_and_folders(tmp_path, tok):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = [f"story {i}: " + STORY.format("dog", "Tom", "ball") for i in range(50)]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:25]))
    pq.write_table(pa.table({"text": texts[25:]}), tmp_path / "d" / "b.parquet")
    files = resolve_sources(tmp_path / "d")
    assert [p.text for p in iter_pieces(files)] == texts
    built = build_shards(files, tok, out=tmp_path / "s", val_fraction=0.1)
    assert built.manifest["documents"] == {"train": 45, "val": 5}


def test_windows_visit_every_window_once_per_epoch_and_resume(tmp_path, tok):
    (tmp_path / "a.txt").write_text(corpus_text(300))
    built = build_shards([tmp_path / "a.txt"], tok, out=tmp_path / "s", shard_chars=3000)
    w = ShardWindows(built, block_size=16, seed=3)
    n = w.n_windows("train")
    seen = [tuple(x[0].tolist()) for x, _ in (w.next_train(1) for _ in range(n))]
    assert w.epochs == 1.0 and len(w._permutation(0)) == n and sorted(w._permutation(0).tolist()) == list(range(n))
    assert len(seen) == n
    x, y = w.next_train(4)
    assert (x[:, 1:] == y[:, :-1]).all()
    state = w.state_dict()
    more = w.next_train(3)[0]
    w2 = ShardWindows(built, block_size=16, seed=3)
    w2.load_state_dict(state)
    assert (w2.next_train(3)[0] == more).all()
