"""Supervised fine-tuning data: records -> conversations -> (ids, loss mask) -> padded or packed batches.

* ``conversation_from_record`` reads the formats the registry holds: Alpaca-style
  ``{instruction, input, output}``, chat-style ``{messages: [{role, content}, ...]}`` and MiniMind's own
  ``{conversations: [{role, content}, ...]}`` (its SFT and LoRA files, see ``chat_messages``); a
  malformed record is an error naming the file and the record.
* ``encode_examples`` applies the ChatML template (``mmlab.tokenizer.chat.encode_chat``): ids, and a
  mask that is 1 on the tokens the model must produce (assistant content and its ``<|im_end|>``).
* Two ways to batch them, measured against each other in the data lesson:
  ``pad_batch`` (one conversation per row, padded to the longest row) and ``pack_examples``
  (conversations laid end to end in rows of exactly ``block_size`` tokens).
  Targets are the next token where the mask is 1 and ``IGNORE_INDEX`` elsewhere, so the loss counts
  only what the assistant says.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmlab.data.corpus import named_records
from mmlab.data.registry import DataError
from mmlab.model.lm import IGNORE_INDEX
from mmlab.tokenizer.base import Tokenizer, TokenizerError
from mmlab.tokenizer.chat import encode_chat, validate_messages

Messages = list[dict[str, Any]]


def chat_messages(messages: Any, where: str, field: str = "messages", tools: Any = None) -> Messages:
    """A list of chat messages checked against the chat template (``mmlab.tokenizer.chat``), errors naming
    ``where`` and the message.

    MiniMind-3's SFT files (``sft_t2t*.jsonl``) add two things to an assistant message, kept as they are for the
    template to render (Qwen3's way): ``reasoning_content`` (a ``<think>`` block) and ``tool_calls``; a ``tool``
    message is a tool's result. Arguments given as a JSON string (OpenAI's wire format) are parsed here, so
    that a bad one is an error naming the record, not a surprise at training time. A record's ``tools`` (the
    schemas offered to the model) travel on the first message."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: {field!r} must be a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise DataError(f"{where}: {field}[{i}] must be a {{role, content}} object, got {type(m).__name__}")
        m = {k: v for k, v in m.items() if (k in ("role", "content", "reasoning_content", "tool_calls")
             and v is not None) or k == "content"}
        if m.get("content") is None and m.get("tool_calls"):
            m["content"] = ""
        if not isinstance(m.get("content"), str):
            raise DataError(f"{where}: {field}[{i}].content must be a string, got {type(m.get('content')).__name__}")
        calls = m.get("tool_calls")
        if isinstance(calls, list):
            m["tool_calls"] = [_parsed_arguments(call, f"{where}: {field}[{i}].tool_calls[{j}]")
                               for j, call in enumerate(calls)]
        out.append(m)
    if tools is not None:
        out[0] = {**out[0], "tools": tools}
    try:
        validate_messages(out)
    except TokenizerError as e:
        raise DataError(f"{where}: {field}: {e}") from None
    return out


def _parsed_arguments(call: Any, where: str) -> Any:
    fn = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("arguments"), str):
        return call
    try:
        args = json.loads(fn["arguments"])
    except json.JSONDecodeError:
        raise DataError(f"{where}: arguments of {fn.get('name')!r} are not valid JSON") from None
    return {"type": "function", "function": {**fn, "arguments": args}}


def conversation_from_record(record: Any, where: str) -> Messages:
    """One record as chat messages. ``where`` ("file:line" or "file[i]") goes into every error."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    key = next((k for k in ("messages", "conversations") if k in record), None)
    if key is not None:
        messages = chat_messages(record[key], where, key, record.get("tools"))
        if not any(m["role"] == "assistant" and (m["content"].strip() or m.get("tool_calls")) for m in messages):
            raise DataError(f"{where}: no non-empty assistant message: nothing to train on")
        return messages
    missing = [k for k in ("instruction", "output") if not isinstance(record.get(k), str)]
    if missing:
        raise DataError(f"{where}: no string field {missing[0]!r} (expected Alpaca-style instruction/input/output, "
                        "chat-style messages, or MiniMind's conversations)")
    if not record["output"].strip():
        raise DataError(f"{where}: field 'output' is empty: nothing to train on")
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise DataError(f"{where}: field 'input' must be a string")
    prompt = record["instruction"] + (f"\n\n{extra}" if extra.strip() else "")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]


def load_conversations(path: str | Path, with_names: bool = False) -> Any:
    """Conversations of a ``.json`` list or a ``.jsonl`` file of records; ``with_names``: also each one's
    place in the file (``file:line`` or ``file[i]``), for messages about it."""
    named = named_records(path)
    convs = [conversation_from_record(r, where) for where, r in named]
    return (convs, [where for where, _ in named]) if with_names else convs


@dataclass(frozen=True)
class Example:
    ids: list[int]
    mask: list[int]  # 1 where the token is a target (the assistant produces it)


class EncodedExamples(list):
    """The encoded examples, and what encoding did to the others: ``truncated`` counts conversations cut
    at ``max_len`` (and kept), ``dropped`` lists the indices of those with no target token left after the
    cut (a prompt longer than ``max_len``). Nothing is dropped silently: the count is in ``summary()``
    and a warning."""

    def __init__(self, examples: Sequence[Example] = (), truncated: int = 0, dropped: Sequence[int] = ()):
        super().__init__(examples)
        self.truncated, self.dropped = truncated, list(dropped)

    def summary(self) -> str:
        return (f"{len(self)} examples; {self.truncated} cut at max_len and kept; {len(self.dropped)} dropped "
                "(no assistant token left after the cut)")


def encode_examples(tokenizer: Tokenizer, conversations: Sequence[Messages], max_len: int | None = None,
                    source: str = "conversation", on_drop: str = "warn",
                    names: Sequence[str] | None = None) -> EncodedExamples:
    """Template and tokenize; conversations longer than ``max_len`` tokens are cut, and kept only if a
    target token survives the cut. ``on_drop``: "warn" (count them and warn), "error" (raise on the first,
    naming it) or "ignore" (count only). ``names``: how messages name each conversation (default
    ``"<source> <index>"``)."""
    if on_drop not in ("warn", "error", "ignore"):
        raise ValueError(f"on_drop={on_drop!r}")
    def name(i: int) -> str:
        return names[i] if names is not None else f"{source} {i}"

    out, truncated, dropped = [], 0, []
    for i, conv in enumerate(conversations):
        try:
            ids, mask = encode_chat(tokenizer, conv)
        except TokenizerError as e:
            raise DataError(f"{name(i)}: {e}") from None
        cut = max_len is not None and len(ids) > max_len
        if cut:
            ids, mask = ids[:max_len], mask[:max_len]
        if any(mask[1:]):
            out.append(Example(ids, mask))
            truncated += cut
        elif on_drop == "error":
            raise DataError(f"{name(i)}: no assistant token to train on within max_len={max_len}; raise "
                            "max_len, shorten the prompt, or give the assistant a non-empty answer")
        else:
            dropped.append(i)
    result = EncodedExamples(out, truncated, dropped)
    if dropped and on_drop == "warn":
        import warnings

        warnings.warn(f"{source}s: {result.summary()}; first dropped: {', '.join(name(i) for i in dropped[:5])}",
                      stacklevel=2)
    return result


def targets_of(ids: list[int], mask: list[int], train_on_prompt: bool = False) -> list[int]:
    """The next-token targets of one row: ids[t + 1] where token t + 1 is a target, else IGNORE_INDEX.
    ``train_on_prompt`` makes every next token a target (the mistake the data lesson measures)."""
    return [ids[t + 1] if (train_on_prompt or mask[t + 1]) else IGNORE_INDEX for t in range(len(ids) - 1)]


def pad_batch(examples: Sequence[Example], pad_id: int,
              train_on_prompt: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One example per row, right-padded to the longest: x (B, T), y (B, T) with IGNORE_INDEX on
    padding (and on prompt tokens unless ``train_on_prompt``)."""
    width = max(len(e.ids) for e in examples) - 1
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.ids) - 1
        x[row, :n] = torch.tensor(e.ids[:-1])
        y[row, :n] = torch.tensor(targets_of(e.ids, e.mask, train_on_prompt))
    return x, y


def pack_examples(examples: Sequence[Example], block_size: int, pad_id: int,
                  train_on_prompt: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples laid end to end and cut into rows of ``block_size`` inputs (the last row padded).
    An example may straddle two rows, and a row's attention spans the examples in it (no
    per-document mask): the usual trade of packing, stated in the data lesson."""
    ids: list[int] = []
    targets: list[int] = []
    for e in examples:
        ids += e.ids[:-1]
        targets += targets_of(e.ids, e.mask, train_on_prompt)
    n_rows = -(-len(ids) // block_size)
    x = torch.full((n_rows, block_size), pad_id, dtype=torch.long)
    y = torch.full((n_rows, block_size), IGNORE_INDEX, dtype=torch.long)
    flat_x, flat_y = torch.tensor(ids), torch.tensor(targets)
    x.view(-1)[: len(ids)] = flat_x
    y.view(-1)[: len(ids)] = flat_y
    return x, y


def padding_share(x_rows: int, width: int, real_tokens: int) -> float:
    """The share of a batch's positions that hold padding."""
    return 1 - real_tokens / (x_rows * width)


class SFTBatches:
    """A BatchSource over encoded examples: ``mode="pad"`` draws examples and pads them per batch;
    ``mode="pack"`` draws examples and packs them end to end into the batch's rows — a fresh packing for
    every batch, so an example's neighbours and its place in a row change from one epoch to the next (a
    packing made once would pair the same conversations for the whole run, which a model can memorise
    on a small data set). Evaluation uses every val example once."""

    def __init__(self, train: Sequence[Example], val: Sequence[Example], pad_id: int, mode: str = "pad",
                 block_size: int = 256, eval_batch_size: int = 16, train_on_prompt: bool = False):
        if mode not in ("pad", "pack"):
            raise ValueError(f"mode={mode!r}")
        if not train:
            raise DataError("no training examples (every conversation was empty or cut away)")
        self.train, self.val, self.pad_id, self.mode = list(train), list(val), pad_id, mode
        self.train_on_prompt = train_on_prompt
        # a padded row holds one whole example: it must fit the model's context (packing cuts rows itself;
        # evaluation pads every val example)
        for split, examples in (("train", self.train if mode == "pad" else []), ("val", self.val)):
            longest = max(range(len(examples)), key=lambda j: len(examples[j].ids), default=None)
            if longest is not None and len(examples[longest].ids) - 1 > block_size:
                raise DataError(f"{split} example {longest} has {len(examples[longest].ids)} tokens, more than "
                                f"block_size + 1 = {block_size + 1}; encode with max_len={block_size + 1} "
                                "(or raise block_size to the model's max_seq_len)")
        self.block_size = block_size
        if mode == "pack":  # each example's inputs and targets, ready to lay end to end
            self._streams = [(torch.tensor(e.ids[:-1]), torch.tensor(targets_of(e.ids, e.mask, train_on_prompt)))
                             for e in self.train]
            self._mean_len = sum(len(x) for x, _ in self._streams) / len(self._streams)
        # val: always padded per example and never trained on the prompt, so every variant is measured alike
        self._eval = [pad_batch(self.val[i:i + eval_batch_size], pad_id)
                      for i in range(0, len(self.val), eval_batch_size)]

    def sample(self, split: str, rows: int, generator: torch.Generator):
        if self.mode == "pack":
            need = rows * self.block_size
            xs, ys, have = [], [], 0
            while have < need:  # draw examples (with replacement) until the rows are full
                k = int((need - have) / self._mean_len) + 1
                for j in torch.randint(len(self._streams), (k,), generator=generator).tolist():
                    x, y = self._streams[j]
                    xs.append(x)
                    ys.append(y)
                    have += len(x)
            # the last example is cut at the batch's end (its rest is not carried over)
            return (torch.cat(xs)[:need].view(rows, self.block_size),
                    torch.cat(ys)[:need].view(rows, self.block_size))
        i = torch.randint(len(self.train), (rows,), generator=generator).tolist()
        return pad_batch([self.train[j] for j in i], self.pad_id, self.train_on_prompt)

    def slice_rows(self, batch, start: int, stop: int):
        return tuple(t[start:stop] for t in batch)

    def eval_batches(self, split: str):
        return self._eval if split == "val" else []
