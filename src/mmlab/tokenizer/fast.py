"""Encoding a corpus fast: ``tiktoken`` running a byte-level BPE trained with Hugging Face ``tokenizers``.

A GPT-2-style byte-level BPE (what ``train_bpe`` makes) is a table of byte strings ranked by merge order
and the GPT-2 pre-tokenizer regex. ``tiktoken`` encodes such a table faster per core than ``tokenizers``
does (timed side by side in the issue-19 note; not yet in a committed benchmark), and the speed of
tokenizing is what decides how long a gigabyte corpus takes to prepare. The two must agree token for
token: a shard build (``mmlab.data.shards``) uses tiktoken only after it reproduced ``tokenizers``' ids on
the build's first batch of text, and ``tests/test_shards.py`` checks a build against ``encode``; otherwise
the build uses ``tokenizers``.
"""

from __future__ import annotations

# the GPT-2 pattern, which the ByteLevel pre-tokenizer (use_regex=True) applies
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def tiktoken_encoding(spec: dict):
    """A ``tiktoken.Encoding`` from ``BPETokenizer.tiktoken_spec()``, or None without tiktoken installed."""
    try:
        import tiktoken
    except ImportError:
        return None
    return tiktoken.Encoding("mmlab-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=spec["ranks"],
                             special_tokens=spec["specials"], explicit_n_vocab=None)
