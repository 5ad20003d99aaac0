"""Shared by the data lesson's experiments: one BPE for all the stages' data."""

from functools import lru_cache

from mmlab.data.corpus import read_json
from mmlab.data.registry import dataset_path
from mmlab.lab.lm import document_splits
from mmlab.tokenizer.bpe import train_bpe


@lru_cache(maxsize=1)
def tokenizer(vocab_size: int = 4096):
    """A byte-level BPE trained on TinyStories stories and the instruction data's texts."""
    stories, _ = document_splits("tinystories-train-2mib", max_chars=1_000_000)
    records = read_json(dataset_path("instructions-1k"))
    texts = [r["instruction"] + "\n" + r["input"] + "\n" + r["output"] for r in records]
    return train_bpe(stories + texts, vocab_size=vocab_size)


def sft_examples(max_len: int = 256, n_val: int = 100, limit: int | None = None):
    """instructions-1k, templated and tokenized: (train, val) examples; the last n_val records are held out."""
    from mmlab.data.sft import conversation_from_record, encode_examples

    records = read_json(dataset_path("instructions-1k"))[:limit]
    convs = [conversation_from_record(r, f"instructions-1k[{i}]") for i, r in enumerate(records)]
    n_val = min(n_val, len(convs) // 5)
    tok = tokenizer()
    return encode_examples(tok, convs[:-n_val], max_len), encode_examples(tok, convs[-n_val:], max_len), convs[-n_val:]


def sft_model_config(vocab_size: int, max_len: int = 256):
    from mmlab.config import ModelConfig

    return ModelConfig(vocab_size=vocab_size, hidden_size=128, n_layers=4, n_heads=4, max_seq_len=max_len,
                       rope_theta=1e4)
