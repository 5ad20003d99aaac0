"""The plain-Python teaching BPE: the textbook example, round trips for any text (hypothesis), merges
that never cross a chunk, special tokens, save/load and clear errors."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmlab.tokenizer.base import SPECIAL_TOKENS, TokenizerError, load_tokenizer
from mmlab.tokenizer.teaching_bpe import TeachingBPE, chunks, merge

CORPUS = ("The quick brown fox jumps over the lazy dog. " * 20 + "Ünïcödé text, émojis 🙂 and numbers 12345. " * 5
          + "ROMEO: But soft, what light through yonder window breaks?\n" * 10)


@pytest.fixture(scope="module")
def tok():
    return TeachingBPE.train(CORPUS, vocab_size=256 + 60 + len(SPECIAL_TOKENS))


def test_the_textbook_example_merges_the_most_frequent_pair_first():
    t = TeachingBPE.train("aaabdaaabac", 256 + 3, special_tokens=())
    assert t.merges == [(97, 97), (97, 98), (256, 257)]  # "aa", then "ab", then "aa"+"ab"
    assert t.encode("aaabdaaabac") == [258, 100, 258, 97, 99]


def test_merge_replaces_non_overlapping_pairs_left_to_right():
    assert merge((1, 1, 1, 2, 1, 1), (1, 1), 9) == (9, 1, 2, 9)


@given(st.text(max_size=200))
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_text_round_trips(tok, text):
    text = text.encode("utf-8", errors="ignore").decode("utf-8")  # lone surrogates are not encodable text
    assert tok.decode(tok.encode(text, allow_special=False)) == text


@given(st.text(max_size=200))
def test_chunks_concatenate_back_to_the_text(text):
    assert "".join(chunks(text)) == text


def test_training_compresses_and_is_deterministic(tok):
    again = TeachingBPE.train(CORPUS, vocab_size=tok.vocab_size)
    assert again.merges == tok.merges and tok.vocab_size == 256 + 60 + 3
    assert len(CORPUS.encode()) / len(tok.encode(CORPUS)) > 2.0  # the training text compresses well


def test_merges_never_cross_a_chunk(tok):
    for token in tok.vocab.values():
        text = token.decode("utf-8", errors="ignore")
        assert len(chunks(text)) <= 1, token


def test_special_tokens_are_single_ids_and_optional(tok):
    ids = tok.encode("hi<|im_end|>there")
    assert tok.special["<|im_end|>"] in ids and tok.decode(ids) == "hi<|im_end|>there"
    assert tok.special["<|im_end|>"] not in tok.encode("hi<|im_end|>there", allow_special=False)
    assert tok.token_to_id("<|endoftext|>") == tok.vocab_size - 3 and tok.token_to_id("a") == 97


def test_save_load_and_load_tokenizer(tok, tmp_path):
    path = tok.save(tmp_path)
    for loaded in (TeachingBPE.load(path), load_tokenizer(tmp_path), load_tokenizer(path)):
        assert loaded.merges == tok.merges and loaded.encode(CORPUS) == tok.encode(CORPUS)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "teaching_bpe.json").write_text('{"type": "something else"}')
    with pytest.raises(TokenizerError, match="cannot read a teaching BPE tokenizer"):
        TeachingBPE.load(tmp_path / "bad" / "teaching_bpe.json")


def test_bad_inputs_are_clear(tok):
    with pytest.raises(TokenizerError, match="empty text"):
        TeachingBPE.train("", 300)
    with pytest.raises(TokenizerError, match="below 256 bytes"):
        TeachingBPE.train("abc", 100)
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        tok.decode([10**6])


def test_tokenizer_train_cli_and_pretraining_with_the_result(tmp_path, run_env):
    import subprocess
    import sys

    from conftest import train_cmd

    env, config = run_env

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "mmlab.cli", "tokenizer", "train", *args], env=env,
                              capture_output=True, text=True, timeout=300)

    for kind in ("bpe", "teaching-bpe"):
        out = tmp_path / kind
        done = cli("--data", "the-verdict", "--vocab-size", "300", "--out", str(out), "--kind", kind)
        assert done.returncode == 0, done.stderr
        assert "bytes per token" in done.stdout and load_tokenizer(out).vocab_size == 300
    again = cli("--data", "the-verdict", "--vocab-size", "300", "--out", str(tmp_path / "bpe"))
    assert again.returncode == 1 and "already holds a tokenizer" in again.stderr
    # the saved teaching tokenizer trains a model through the usual loop
    cmd = [a for a in train_cmd(tmp_path / "run", config, "--max-iters", "3") if a not in ("--tokenizer", "char")]
    run = subprocess.run([*cmd, "--tokenizer", str(tmp_path / "teaching-bpe")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
