"""Data registry (cache -> mirror -> download, sha256 always), corpora, token cache, batches, synthetic data."""

import functools
import hashlib
import http.server
import shutil
import threading

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mmlab.data import registry
from mmlab.data.corpus import iter_jsonl, load_corpus, read_json, read_text, split_documents
from mmlab.data.pretrain import PretrainData, tokenize_corpus
from mmlab.data.registry import REGISTRY, DataError, dataset_path, fetch, get_dataset
from mmlab.data.synthetic import TASKS, make_tasks, story_corpus
from mmlab.tokenizer import CharTokenizer, train_bpe


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """An empty cache and no mirror: nothing can be found locally."""
    monkeypatch.setenv("MMLAB_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MMLAB_DATA_MIRROR", raising=False)
    return tmp_path


def test_registry_has_the_required_datasets():
    required = {"tinyshakespeare", "tinystories-valid-1k", "tinystories-train-2mib", "the-verdict",
                "instructions-1k", "preferences-1k", "gsm8k-test", "arc-easy-test", "commonsenseqa-val",
                "hellaswag-100"}
    assert required <= set(REGISTRY)
    for ds in REGISTRY.values():
        if isinstance(ds, registry.HubFile):  # pinned to a commit of a Hugging Face dataset repository
            assert ds.url.startswith(f"https://huggingface.co/datasets/{ds.repo_id}/resolve/")
            assert len(ds.revision) == 40 and ds.revision_source and ds.stage in ("pretrain", "sft", "lora", "dpo")
        else:
            assert ds.url.startswith("https://raw.githubusercontent.com/") and len(ds.sha256) == 64


def test_every_registered_file_in_the_mirror_verifies(mirror_file, isolated, monkeypatch):
    folder = mirror_file("tinyshakespeare_input.txt").parent
    monkeypatch.setenv("MMLAB_DATA_MIRROR", str(folder))
    for name, ds in REGISTRY.items():
        if not isinstance(ds, registry.HubFile):  # hub files: tests/test_hub.py
            assert dataset_path(name, download=False).parent == folder


def test_offline_without_mirror_names_the_url_and_the_variable(isolated, monkeypatch):
    monkeypatch.setattr(registry, "_GITHUB_RAW", "http://127.0.0.1:9")  # nothing listens on port 9
    ds = get_dataset("the-verdict")
    monkeypatch.setitem(REGISTRY, "the-verdict", registry.Dataset(**{**ds.__dict__, "url": "http://127.0.0.1:9/x"}))
    with pytest.raises(DataError) as info:
        dataset_path("the-verdict")
    message = str(info.value)
    assert "http://127.0.0.1:9/x" in message and "MMLAB_DATA_MIRROR" in message
    assert not list((isolated / "cache").glob("*the-verdict*"))  # no half-written file left behind


def test_corrupted_mirror_file_is_detected(mirror_file, isolated, monkeypatch):
    mirror = isolated / "mirror"
    mirror.mkdir()
    original = mirror_file("the-verdict.txt").read_bytes()
    (mirror / "the-verdict.txt").write_bytes(original[:-10])  # truncated
    monkeypatch.setenv("MMLAB_DATA_MIRROR", str(mirror))
    with pytest.raises(DataError, match="expected 20,479 for dataset 'the-verdict'"):
        dataset_path("the-verdict")
    (mirror / "the-verdict.txt").write_bytes(original.replace(b"the", b"teh", 1))  # same size, wrong bytes
    with pytest.raises(DataError, match="sha256 .* does not match"):
        dataset_path("the-verdict")


def test_corrupted_cache_file_says_how_to_fix_it(mirror_file, isolated):
    cache = isolated / "cache"
    cache.mkdir()
    (cache / "the-verdict.txt").write_bytes(mirror_file("the-verdict.txt").read_bytes()[:100])
    with pytest.raises(DataError, match="mmlab data download the-verdict --force"):
        dataset_path("the-verdict")


@pytest.fixture
def file_server(mirror_file):
    """Serve the mirror folder over HTTP on loopback: the real download code, no internet."""
    folder = mirror_file("the-verdict.txt").parent
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_verifies_and_caches(file_server, isolated, monkeypatch):
    ds = get_dataset("the-verdict")
    monkeypatch.setitem(REGISTRY, ds.name, registry.Dataset(**{**ds.__dict__, "url": f"{file_server}/the-verdict.txt"}))
    path = dataset_path("the-verdict")
    assert path == isolated / "cache" / "the-verdict.txt"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ds.sha256
    # a download whose bytes do not match is refused and leaves nothing behind
    bad = registry.Dataset(**{**ds.__dict__, "url": f"{file_server}/tinystories_sample_cs336.txt"})
    monkeypatch.setitem(REGISTRY, ds.name, bad)
    with pytest.raises(DataError, match="bytes, expected"):
        fetch(bad, force=True)
    assert path.read_bytes()  # the good cached copy is intact
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(DataError, match="unknown dataset 'shakespeare'; known: tinyshakespeare"):
        get_dataset("shakespeare")


# ---- corpora and record files -----------------------------------------------------------------
def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "also ok"}\n{"text": broken}\n')
    with pytest.raises(DataError, match=r"data.jsonl:4: invalid JSON"):
        list(iter_jsonl(path))
    path.write_text('{"text": "ok"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"data.jsonl:2: expected a JSON object"):
        list(iter_jsonl(path))
    path.write_text('{"text": "ok"}\n\n{"body": "no text field"}\n')
    with pytest.raises(DataError, match=r"data.jsonl:3: no string field 'text'"):
        load_corpus(str(path))


def test_undecodable_bytes_name_the_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("line one\nline two\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt:3: bytes b'\\xe9' at offset 21 are not valid UTF-8"):
        read_text(path)


def test_empty_and_missing_corpora(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    with pytest.raises(DataError, match="empty.txt: the corpus is empty"):
        load_corpus(str(empty))
    with pytest.raises(DataError, match="neither a file nor a known corpus"):
        load_corpus("no-such-corpus")
    with pytest.raises(DataError, match="not a text corpus"):
        load_corpus("gsm8k-test")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"a": 1,\n "b": }')
    with pytest.raises(DataError, match=r"bad.json:2: invalid JSON"):
        read_json(bad_json)


def test_tinystories_documents_drop_the_cut_off_story(mirror_file, monkeypatch):
    monkeypatch.setenv("MMLAB_DATA_MIRROR", str(mirror_file("tinystories_train_head2MiB.txt").parent))
    corpus = load_corpus("tinystories-train-2mib")
    raw = mirror_file("tinystories_train_head2MiB.txt").read_text()
    assert len(corpus.documents) == raw.count("<|endoftext|>")
    assert corpus.documents[0].startswith("Lily") or corpus.documents[0].startswith("One day")
    assert all("<|endoftext|>" not in d for d in corpus.documents)


@given(st.lists(st.text(alphabet="abc \n", min_size=1, max_size=20), min_size=1, max_size=8))
def test_split_documents_round_trips(docs):
    docs = [d.strip() for d in docs if d.strip()]
    text = "".join(d + "<|endoftext|>" for d in docs)
    assert split_documents(text, "<|endoftext|>") == docs


# ---- tokens, batches ---------------------------------------------------------------------------
def test_token_cache_is_keyed_by_corpus_and_tokenizer(tmp_path):
    corpus = load_corpus("synthetic-stories", synthetic_chars=5_000)
    tok = CharTokenizer.from_corpus("".join(corpus.documents), special_tokens=["<|endoftext|>"])
    a = tokenize_corpus(corpus, tok, cache=tmp_path)
    assert len(list((tmp_path / "tokens").glob("*.bin"))) == 1
    cached = next((tmp_path / "tokens").glob("*.bin"))
    stamp = cached.stat().st_mtime_ns, cached.stat().st_ino
    b = tokenize_corpus(corpus, tok, cache=tmp_path)  # reused, not rebuilt
    assert (cached.stat().st_mtime_ns, cached.stat().st_ino) == stamp
    assert np.array_equal(a, b) and len(list((tmp_path / "tokens").glob("*.bin"))) == 1
    # a damaged entry (truncated tokens, torn metadata) is detected and rebuilt, not trusted
    expected = np.array(a)  # a copy: truncating a file that is still memory-mapped would fault on access
    del a, b
    cached.write_bytes(cached.read_bytes()[:10])
    assert np.array_equal(tokenize_corpus(corpus, tok, cache=tmp_path), expected)
    next((tmp_path / "tokens").glob("*.json")).write_text("{")
    assert np.array_equal(tokenize_corpus(corpus, tok, cache=tmp_path), expected)
    eot = tok.token_to_id("<|endoftext|>")
    assert int((expected == eot).sum()) == len(corpus.documents)  # one end-of-text per document
    assert tok.decode(expected[: len(corpus.documents[0])].tolist()) == corpus.documents[0]
    bpe = train_bpe(corpus.documents, 300)
    tokenize_corpus(corpus, bpe, cache=tmp_path)
    assert len(list((tmp_path / "tokens").glob("*.bin"))) == 2  # another tokenizer, another file


def test_document_corpus_needs_an_end_of_text_token(tmp_path):
    corpus = load_corpus("synthetic-stories", synthetic_chars=2_000)
    plain = CharTokenizer.from_corpus("".join(corpus.documents))
    with pytest.raises(DataError, match="needs a tokenizer with the <|endoftext|> token"):
        tokenize_corpus(corpus, plain, cache=tmp_path)


def test_batches_are_shifted_windows():
    tokens = np.arange(1000, dtype=np.uint16)
    data = PretrainData.from_tokens(tokens, val_fraction=0.1, block_size=16)
    assert len(data.train) == 900 and int(data.val[0]) == 900
    x, y = data.get_batch("train", 8, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    assert int(x.max()) < 900
    xv, _ = data.get_batch("val", 4, 16, torch.Generator().manual_seed(0))
    assert int(xv.min()) >= 900
    a = data.eval_batches("val", 3, 4, 16)
    b = data.eval_batches("val", 3, 4, 16)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))


def test_too_small_corpus_is_a_clear_error():
    with pytest.raises(DataError, match=r"tiny.txt has 50 tokens, too few for block_size=64.*smaller --block-size"):
        PretrainData.from_tokens(np.arange(50, dtype=np.uint16), 0.1, 64, source="tiny.txt")


def test_fetch_copies_a_verified_mirror_file_without_network(mirror_file, isolated, monkeypatch):
    monkeypatch.setenv("MMLAB_DATA_MIRROR", str(mirror_file("the-verdict.txt").parent))
    monkeypatch.setenv("MMLAB_OFFLINE", "1")
    path = fetch(get_dataset("the-verdict"), force=True)
    assert path == isolated / "cache" / "the-verdict.txt" and path.stat().st_size == 20479


def test_offline_switch_refuses_downloads(isolated, monkeypatch):
    monkeypatch.setenv("MMLAB_OFFLINE", "1")
    with pytest.raises(DataError, match="MMLAB_OFFLINE is set"):
        dataset_path("the-verdict")


# ---- synthetic data ---------------------------------------------------------------------------
def test_synthetic_stories_are_deterministic_and_varied():
    a, b = story_corpus(20_000, seed=3), story_corpus(20_000, seed=3)
    assert a == b and a != story_corpus(20_000, seed=4)
    assert sum(len(d) + 1 for d in a) >= 20_000  # + 1: the separator between documents
    assert len(set(a)) > 0.9 * len(a)


def test_synthetic_tasks_are_verifiable():
    items = make_tasks(60, seed=0)
    assert {i.task for i in items} == set(TASKS)
    assert items == make_tasks(60, seed=0)
    for item in items:
        assert item.is_correct(f" {item.answer}\n") and not item.is_correct(item.answer + "0")
        if item.task == "add":
            a, b = (int(t) for t in item.prompt.removeprefix("What is ").removesuffix("?").split(" + "))
            assert int(item.answer) == a + b
        if item.task == "reverse":
            assert item.answer == item.prompt.split(": ")[1][::-1]


def test_data_cli(mirror_file, isolated, monkeypatch, capsys):
    from mmlab.cli import main

    monkeypatch.setenv("MMLAB_DATA_MIRROR", str(mirror_file("the-verdict.txt").parent))
    assert main(["data", "list"]) == 0
    assert "tinyshakespeare" in capsys.readouterr().out
    assert main(["data", "path", "the-verdict"]) == 0
    assert capsys.readouterr().out.strip().endswith("the-verdict.txt")
    assert main(["data", "verify", "the-verdict", "gsm8k-test"]) == 0
    shutil.copy(mirror_file("the-verdict.txt"), isolated / "the-verdict.txt")
    monkeypatch.setenv("MMLAB_DATA_MIRROR", str(isolated))
    assert main(["data", "verify", "gsm8k-test"]) == 1
    assert "FAILED  gsm8k-test" in capsys.readouterr().out


def test_document_splits_and_token_batches(tmp_path):
    from mmlab.lab.lm import document_splits, token_batches
    from mmlab.tokenizer.bpe import train_bpe

    stories = tmp_path / "stories.txt"
    stories.write_text("<|endoftext|>".join(f"Story {i}: the cat sat." for i in range(20)))
    train, val = document_splits(str(stories), val_fraction=0.1)
    assert len(train) == 18 and len(val) == 2 and val[-1] == "Story 19: the cat sat."
    single = tmp_path / "play.txt"
    single.write_text("x" * 90 + "y" * 10)
    assert document_splits(str(single)) == (["x" * 90], ["y" * 10])
    tok = train_bpe(train, vocab_size=270)
    source = token_batches(tok, train, val, block_size=4, batch_size=2, eval_batches=1)
    eot = tok.token_to_id("<|endoftext|>")
    assert source.data.val.tolist().count(eot) == 2  # one after each held-out story
    assert tok.decode([i for i in source.data.val.tolist() if i != eot]) == "".join(val)
