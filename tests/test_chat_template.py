"""Chat template v2: reasoning, tool schemas, tool calls and tool responses. Our renderer and its Jinja twin
(what transformers' apply_chat_template runs on an exported checkpoint) give the same text and the same ids;
the loss mask covers reasoning and tool calls, never tool responses; what a model writes parses back, and a
bad tool call is reported, not raised."""

import itertools
import json

import pytest
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.utils.chat_template_utils import render_jinja_template

from mmlab.config import get_preset
from mmlab.data.synthetic import story_corpus
from mmlab.hf_export import export_hf
from mmlab.model import MiniMindLM
from mmlab.tokenizer import TokenizerError, encode_chat, render_chat, train_bpe
from mmlab.tokenizer.chat import CHAT_TEMPLATE, ReplyStream, parse_reply, render_tool_call, reply_from_events
from mmlab.tools import ToolRunner
from mmlab.train.checkpoint import save_checkpoint

TOOLS = ToolRunner().schemas()
CALL = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "17*23"}}}
AGENT = [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": "What is 17*23?"},
         {"role": "assistant", "content": None, "reasoning_content": "I should multiply.", "tool_calls": [CALL]},
         {"role": "tool", "content": "391"},
         {"role": "assistant", "content": "It is 391.", "reasoning_content": "The tool said 391."}]
HISTORY = [{"role": "user", "content": "hi"},
           {"role": "assistant", "content": "hello", "reasoning_content": "a greeting"},
           {"role": "user", "content": "and now?"}]
CONVERSATIONS = {"agent": AGENT, "history": HISTORY,
                 "parallel": [{"role": "user", "content": "two things"},
                              {"role": "assistant", "content": "Both:", "tool_calls": [
                                  {"name": "calculator", "arguments": '{"expression": "1+1"}'},
                                  {"function": {"name": "convert_units",
                                                "arguments": {"value": 3, "from_unit": "km", "to_unit": "m"}}}]},
                              {"role": "tool", "content": "2"}, {"role": "tool", "content": "3000"}],
                 "plain": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                           {"role": "assistant", "content": "a"}]}
OPTIONS = {"default": {}, "tools": {"tools": TOOLS}, "no-think prompt": {"add_generation_prompt": True,
                                                                         "enable_thinking": False},
           "keep reasoning": {"keep_reasoning": True, "tools": TOOLS}, "prompt": {"add_generation_prompt": True}}


def jinja(messages, **kw):
    out = render_jinja_template([messages], chat_template=CHAT_TEMPLATE, **kw)
    while isinstance(out, (list, tuple)):
        out = out[0]
    return out


def test_a_plain_conversation_renders_as_chatml_always_did():
    assert render_chat(CONVERSATIONS["plain"], add_generation_prompt=True) == (
        "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_the_agent_conversation_renders_like_qwen3():
    text = render_chat(AGENT, tools=TOOLS)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert "\n<tools>\n" + json.dumps(TOOLS[0]) + "\n" in text
    assert ("<|im_start|>assistant\n<think>\nI should multiply.\n</think>\n\n<tool_call>\n"
            '{"name": "calculator", "arguments": {"expression": "17*23"}}\n</tool_call><|im_end|>\n') in text
    assert "<|im_start|>user\n<tool_response>\n391\n</tool_response><|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n<think>\nThe tool said 391.\n</think>\n\nIt is 391.<|im_end|>\n")


def test_reasoning_before_the_last_user_turn_is_dropped_unless_kept():
    assert "a greeting" not in render_chat(HISTORY)
    assert "<think>\na greeting\n</think>\n\nhello" in render_chat(HISTORY, keep_reasoning=True)
    assert render_chat(HISTORY, add_generation_prompt=True, enable_thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_the_jinja_template_renders_what_we_render(conversation, option):
    assert jinja(CONVERSATIONS[conversation], **OPTIONS[option]) == render_chat(CONVERSATIONS[conversation],
                                                                                **OPTIONS[option])


text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)
names = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
calls = st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": names, "arguments": st.dictionaries(names, st.one_of(st.integers(), text), max_size=2)})}), max_size=2)
message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "tool"]), "content": text}),
    st.fixed_dictionaries({"role": st.just("assistant"), "content": text},
                          optional={"reasoning_content": text, "tool_calls": calls}))


@settings(max_examples=150, deadline=None)
@given(st.lists(message, min_size=1, max_size=6), st.booleans(), st.booleans(), st.sampled_from([None, False]))
def test_property_jinja_equals_render_for_any_conversation(messages, with_tools, generation, thinking):
    kw = {"tools": TOOLS} if with_tools else {}
    kw["add_generation_prompt"] = generation
    if thinking is False:
        kw["enable_thinking"] = False
    assert jinja(messages, **kw) == render_chat(messages, **kw)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    bpe = train_bpe(story_corpus(20_000), vocab_size=300)
    path = tmp_path_factory.mktemp("chat")
    cfg = get_preset("nano", vocab_size=bpe.vocab_size, max_seq_len=64).replace(name="chat")
    save_checkpoint(path / "ckpt", MiniMindLM(cfg), bpe)
    export_hf(path / "ckpt", path / "hf")
    return bpe, transformers.AutoTokenizer.from_pretrained(path / "hf")


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_transformers_gives_our_ids_token_for_token(exported, conversation, option):
    bpe, hf = exported
    ours, _ = encode_chat(bpe, CONVERSATIONS[conversation], **OPTIONS[option])
    theirs = hf.apply_chat_template(CONVERSATIONS[conversation], tokenize=True, **OPTIONS[option])
    theirs = list(theirs["input_ids"] if hasattr(theirs, "keys") else theirs)
    assert theirs == ours


def test_the_mask_covers_reasoning_and_calls_never_tool_responses(exported):
    bpe, _ = exported
    ids, mask = encode_chat(bpe, AGENT, tools=TOOLS)
    target = bpe.decode([i for i, m in zip(ids, mask, strict=True) if m])
    call = render_tool_call("calculator", {"expression": "17*23"})
    assert target == ("<think>\nI should multiply.\n</think>\n\n" + call + "<|im_end|>"
                      "<think>\nThe tool said 391.\n</think>\n\nIt is 391.<|im_end|>")
    context = bpe.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    assert "<tool_response>\n391\n</tool_response>" in context and "# Tools" in context


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), text), text, calls)
def test_property_a_rendered_reply_parses_back(reasoning, content, tool_calls):
    m = {"role": "assistant", "content": content.strip("\n") if tool_calls else content, "tool_calls": tool_calls}
    if reasoning is not None:
        m["reasoning_content"] = reasoning.strip("\n")
    rendered = render_chat([m], keep_reasoning=True)
    reply = parse_reply(rendered.removeprefix("<|im_start|>assistant\n").removesuffix("<|im_end|>\n"))
    if "<tool_call>" in (content + (reasoning or "")) or "</think>" in (content + (reasoning or "")):
        return  # text that itself contains the markup is ambiguous by construction
    if reasoning is not None and reasoning.strip("\n") == reasoning:
        assert reply.reasoning == m["reasoning_content"]
        if reply.content != m["content"]:
            assert not reasoning and content.startswith("\n")  # only leading newlines after </think> are lost
            return
    if reasoning is None and content.lstrip("\n").startswith("<think>"):
        return
    assert reply.errors == []
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [
        (c["function"]["name"], c["function"]["arguments"]) for c in tool_calls]
    if reasoning is None or reply.reasoning is not None:
        assert reply.content == m["content"].lstrip("\n") or reply.content == m["content"]


def test_bad_tool_calls_from_the_model_are_reported_not_raised():
    reply = parse_reply('<think>\nhm\n</think>\n\nSure.\n<tool_call>\n{"name": "calculator", "arguments": '
                        '{"expression": "1+1"}}\n</tool_call>\n<tool_call>\n{bad json\n</tool_call>\n<tool_call>\n'
                        '{"name": "calculator", "arguments": [1]}\n</tool_call><tool_call>{"name": "x"')
    assert reply.reasoning == "hm"
    assert [c.arguments for c in reply.tool_calls] == [{"expression": "1+1"}]
    assert len(reply.errors) == 3
    assert "not valid JSON" in reply.errors[0] and "arguments must be an object" in reply.errors[1]
    assert "never closed" in reply.errors[2]
    assert "{bad json" in reply.content  # kept for the reader
    assert parse_reply("<think>\nstill thinking").reasoning == "still thinking"
    assert parse_reply('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>').tool_calls[0].arguments \
        == {"a": 1}


@pytest.mark.parametrize("messages, why", [
    ([{"role": "tool", "content": "1", "tool_calls": [CALL]}], "only allowed on assistant"),
    ([{"role": "assistant", "content": None}], "content must be a string"),
    ([{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "rm -rf"}}]}], "must be a name"),
    ([{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": 3}}]}],
     "object or a JSON string"),
    ([{"role": "assistant", "content": "", "reasoning_content": 3}], "reasoning_content must be a string"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b", "tools": TOOLS}], "only the first message"),
    ([{"role": "robot", "content": "a"}], "is not one of"),
])
def test_malformed_messages_are_errors_naming_the_message(messages, why):
    with pytest.raises(TokenizerError, match=why):
        render_chat(messages)


pieces_of_replies = st.lists(st.sampled_from(["<think>", "\n", "</think>", "<tool_call>", "</tool_call>", "<", "/",
                                              '{"name": "f", "arguments": {"a": 1}}', "{bad", "hello", " ", "th",
                                              "ink>", "_call>", "tool"]), max_size=25)


@settings(max_examples=300, deadline=None)
@given(pieces_of_replies, st.lists(st.integers(0, 200), max_size=8), st.booleans())
def test_property_streaming_reads_a_reply_as_a_whole_parse_does(parts, cuts, tools):
    text = "".join(parts)
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    stream = ReplyStream(tools)
    events = []
    for a, b in itertools.pairwise(bounds):
        events += stream.feed(text[a:b])
    events += stream.finish()
    streamed, whole = reply_from_events(events, stream.thought), parse_reply(text, tools)
    assert (streamed.content, streamed.reasoning, streamed.errors) == (whole.content, whole.reasoning, whole.errors)
    assert [(c.name, c.arguments) for c in streamed.tool_calls] == [(c.name, c.arguments) for c in whole.tool_calls]
    if not tools:
        assert not whole.tool_calls and not whole.errors
