"""SFT data: record formats with clear errors, the loss mask, padding vs packing."""

import json

import pytest
import torch

from mmlab.data.registry import DataError
from mmlab.data.sft import (
    SFTBatches,
    conversation_from_record,
    encode_examples,
    load_conversations,
    pack_examples,
    pad_batch,
    targets_of,
)
from mmlab.model.lm import IGNORE_INDEX
from mmlab.tokenizer.bpe import train_bpe
from mmlab.tokenizer.chat import encode_chat

CONVS = [[{"role": "user", "content": f"What is {i} plus {i}?"}, {"role": "assistant", "content": f"{2 * i}."}]
         for i in range(12)]


@pytest.fixture(scope="module")
def tok():
    return train_bpe(["What is 3 plus 4? It is 7. " * 20], vocab_size=300)


def test_records_in_both_formats_and_errors_name_the_record(tmp_path):
    alpaca = {"instruction": "Fix the spelling.", "input": "freind", "output": "friend"}
    assert conversation_from_record(alpaca, "f[0]") == [
        {"role": "user", "content": "Fix the spelling.\n\nfreind"}, {"role": "assistant", "content": "friend"}]
    assert conversation_from_record({**alpaca, "input": ""}, "f[0]")[0]["content"] == "Fix the spelling."
    path = tmp_path / "data.json"
    path.write_text(json.dumps([alpaca, {"instruction": "Say hi."}]))
    with pytest.raises(DataError, match=r"data.json\[1\]: no string field 'output'"):
        load_conversations(path)
    jsonl = tmp_path / "chat.jsonl"
    jsonl.write_text(json.dumps({"messages": CONVS[0]}) + "\n" + json.dumps({"messages": "hi"}) + "\n")
    with pytest.raises(DataError, match=r"chat.jsonl:2: 'messages' must be a non-empty list"):
        load_conversations(jsonl)


def test_targets_are_exactly_the_assistant_tokens(tok):
    (ex,) = encode_examples(tok, CONVS[3:4])
    ids, mask = encode_chat(tok, CONVS[3])
    assert ex.ids == ids and ex.mask == mask
    y = targets_of(ex.ids, ex.mask)
    predicted = [ex.ids[t + 1] for t, v in enumerate(y) if v != IGNORE_INDEX]
    assert tok.decode(predicted) == "6.<|im_end|>"
    assert all(v != IGNORE_INDEX for v in targets_of(ex.ids, ex.mask, train_on_prompt=True))


def test_padding_and_packing_keep_the_same_targets(tok):
    examples = encode_examples(tok, CONVS)
    x, y = pad_batch(examples, pad_id=0)
    assert x.shape == (12, max(len(e.ids) for e in examples) - 1)
    px, py = pack_examples(examples, block_size=32, pad_id=0)
    assert px.shape[1] == 32
    # the same multiset of (input, target) pairs where a target exists
    def pairs(a, b):
        keep = b != IGNORE_INDEX
        return sorted(zip(a[keep].tolist(), b[keep].tolist(), strict=True))
    assert pairs(x, y) == pairs(px, py)
    # packing wastes at most the last row's tail; padding wastes the gap to the longest example
    assert (py == IGNORE_INDEX).sum() <= (y == IGNORE_INDEX).sum()


def test_sft_batches_sample_both_modes(tok):
    examples = encode_examples(tok, CONVS)
    g = torch.Generator().manual_seed(0)
    for mode in ("pad", "pack"):
        source = SFTBatches(examples[:10], examples[10:], pad_id=0, mode=mode, block_size=32, eval_batch_size=4)
        x, y = source.sample("train", 3, g)
        assert x.shape[0] == 3 and x.shape == y.shape
        assert len(source.eval_batches("val")) == 1 and source.eval_batches("train") == []
    with pytest.raises(DataError, match="no training examples"):
        SFTBatches([], examples, pad_id=0)


def test_packing_is_fresh_for_every_batch_and_keeps_the_mask(tok):
    """Pack mode lays randomly drawn examples end to end for every batch: the rows change from batch to
    batch (no fixed neighbours to memorise), and every target in them is one of the examples' own."""
    examples = encode_examples(tok, CONVS)
    source = SFTBatches(examples, examples[:2], pad_id=0, mode="pack", block_size=32)
    g = torch.Generator().manual_seed(0)
    (x1, y1), (x2, y2) = source.sample("train", 4, g), source.sample("train", 4, g)
    assert x1.shape == (4, 32) and not torch.equal(x1, x2)
    x, y = pad_batch(examples, pad_id=0)
    keep = y != IGNORE_INDEX
    allowed = set(zip(x[keep].tolist(), y[keep].tolist(), strict=True))
    for bx, by in ((x1, y1), (x2, y2)):
        k = by != IGNORE_INDEX
        assert k.any() and set(zip(bx[k].tolist(), by[k].tolist(), strict=True)) <= allowed
        assert (by == IGNORE_INDEX).any()  # prompts stay masked


@pytest.mark.parametrize("record, message", [
    ({"messages": [{"role": "robot", "content": "hi"}]}, r"f\[3\]: messages: message 0: role='robot'"),
    ({"messages": [{"role": "user", "content": 7}]}, r"f\[3\]: messages\[0\].content must be a string"),
    ({"messages": []}, r"f\[3\]: 'messages' must be a non-empty list"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},
     r"f\[3\]: no non-empty assistant message"),
    ({"instruction": "Say hi.", "output": ""}, r"f\[3\]: field 'output' is empty"),
])
def test_malformed_conversations_are_data_errors_naming_the_record(record, message):
    with pytest.raises(DataError, match=message):
        conversation_from_record(record, "f[3]")


def test_cut_and_dropped_examples_are_counted_never_silent(tok):
    long_prompt = [{"role": "user", "content": "What is 3 plus 4? " * 30}, {"role": "assistant", "content": "7"}]
    convs = [CONVS[0], long_prompt, CONVS[1]]
    full = encode_examples(tok, convs)
    assert len(full) == 3 and full.truncated == 0 and full.dropped == []
    max_len = len(full[0].ids) - 2  # cuts the first conversation inside its answer; the long prompt loses all
    with pytest.warns(UserWarning, match="1 dropped"):
        cut = encode_examples(tok, convs, max_len=max_len)
    assert cut.dropped == [1] and len(cut) == 2 and cut.truncated >= 1
    assert "1 dropped" in cut.summary()
    with pytest.raises(DataError, match="conversation 1: no assistant token to train on within max_len"):
        encode_examples(tok, convs, max_len=max_len, on_drop="error")


def test_padded_batches_must_fit_the_block(tok):
    examples = encode_examples(tok, CONVS)
    longest = max(len(e.ids) for e in examples)
    with pytest.raises(DataError, match=r"train example \d+ has \d+ tokens, more than block_size \+ 1"):
        SFTBatches(examples, examples, pad_id=0, mode="pad", block_size=longest - 2)
    SFTBatches(examples, examples, pad_id=0, mode="pad", block_size=longest - 1)  # exactly fits
    with pytest.raises(DataError, match="val example"):  # packing cuts train rows, but val is padded whole
        SFTBatches(examples, examples, pad_id=0, mode="pack", block_size=longest - 2)


@pytest.mark.parametrize("record, says", [
    ({"tools": "calc"}, r":2: messages: tools must be a list"),
    ({"tools": [{"type": "function"}]}, r":2: messages: tools\[0\]: expected"),
    ({"calls": [{"type": "function", "function": {"name": "calculator", "arguments": "{bad"}}]},
     r":2: messages\[1\]\.tool_calls\[0\]: arguments of 'calculator' are not valid JSON"),
    ({"calls": "x"}, r":2: messages: message 1: tool_calls must be a list"),
])
def test_malformed_tools_in_an_sft_record_name_the_file_line_and_field(tmp_path, record, says):
    from mmlab.data.sft import load_conversations
    from mmlab.errors import MMLabError

    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    bad = {"messages": [{"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "" if "calls" in record else "x",
                         **({"tool_calls": record["calls"]} if "calls" in record else {})}]}
    if "tools" in record:
        bad["tools"] = record["tools"]
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(MMLabError, match=rf"{path.name}{says}"):
        load_conversations(str(path))
