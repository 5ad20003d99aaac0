"""The server with tools and reasoning: a tiny model SFT-trained (here, in seconds, on three conversations) to
think and call the calculator answers OpenAI-shaped tool_calls and reasoning_content, whole and streamed, to the
official openai client; the client runs the tool and sends the result back; a call the model writes as bad JSON
is reported in the log and kept as content, never a 500; bad tool fields in the request are 400s naming them."""

import json
import logging

import pytest
import torch

from conftest import serving
from mmlab.config import get_preset
from mmlab.data.synthetic import story_corpus
from mmlab.model import MiniMindLM
from mmlab.model.lm import IGNORE_INDEX
from mmlab.tokenizer import encode_chat, train_bpe
from mmlab.tokenizer.chat import render_chat
from mmlab.tools import ToolRunner
from mmlab.train.checkpoint import save_checkpoint

TOOLS = ToolRunner().schemas()
ASK = [{"role": "user", "content": "What is 17*23?"}]
CALL = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "17*23"}}}
THINK_AND_CALL = {"role": "assistant", "content": "", "reasoning_content": "Multiply them.", "tool_calls": [CALL]}
RESULT = {"role": "tool", "content": "391"}
ANSWER = {"role": "assistant", "content": "It is 391.", "reasoning_content": "The tool says 391."}
BROKEN = [{"role": "user", "content": "Break it."},
          {"role": "assistant", "content": '<tool_call>\n{"name": calculator\n</tool_call>'}]
TRAIN = [ASK + [THINK_AND_CALL], ASK + [THINK_AND_CALL, RESULT, ANSWER], BROKEN]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A model that learned four replies by heart: SFT with the chat template's mask, until greedy decoding
    gives each one back (checked here, so a failure to learn fails the fixture, not a server test)."""
    torch.manual_seed(0)
    corpus = story_corpus(20_000) + [render_chat(c, tools=TOOLS) for c in TRAIN] * 30 + [render_chat(BROKEN)] * 30
    tok = train_bpe(corpus, vocab_size=600)
    model = MiniMindLM(get_preset("nano", vocab_size=tok.vocab_size, max_seq_len=512).replace(name="tools"))
    rows = [encode_chat(tok, c, tools=TOOLS) for c in TRAIN] + [encode_chat(tok, BROKEN)]  # and without tools
    width = max(len(ids) for ids, _ in rows)
    x = torch.zeros(len(rows), width, dtype=torch.long)
    y = torch.full((len(rows), width), IGNORE_INDEX)
    for i, (ids, mask) in enumerate(rows):
        x[i, :len(ids)] = torch.tensor(ids)
        y[i, :len(ids) - 1] = torch.where(torch.tensor(mask[1:]) == 1, torch.tensor(ids[1:]), IGNORE_INDEX)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model(x, targets=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    assert loss.item() < 0.05, f"the tiny model did not learn its replies (loss {loss.item():.3f})"
    out = tmp_path_factory.mktemp("tools") / "ckpt"
    save_checkpoint(out, model.eval(), tok)
    return out


def running(ckpt, batch):
    return serving(ckpt, batch=batch, max_tokens_limit=64, default_max_tokens=64, timeout_s=20)


@pytest.fixture(scope="module", params=[16, 1], ids=["batched", "one-at-a-time"])
def client(ckpt, request):
    openai = pytest.importorskip("openai")
    with running(ckpt, request.param) as srv:
        yield openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=30)


def test_a_tool_call_and_reasoning_come_back_openai_shaped(client):
    r = client.chat.completions.create(model="tools", messages=ASK, tools=TOOLS, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.model_extra["reasoning_content"] == "Multiply them."
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "calculator"
    assert json.loads(call.function.arguments) == {"expression": "17*23"}

    # the client runs the tool and sends the conversation back, tool_call_id and all: the model answers
    result = ToolRunner().run({"name": call.function.name, "arguments": json.loads(call.function.arguments)})
    assert result.content == "391"
    history = ASK + [choice.message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": result.content}]
    final = client.chat.completions.create(model="tools", messages=history, tools=TOOLS, temperature=0)
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.content == "It is 391."
    assert final.choices[0].message.tool_calls is None


def test_streaming_sends_reasoning_then_the_call(client):
    reasoning, content, calls, finish = "", "", [], None
    for chunk in client.chat.completions.create(model="tools", messages=ASK, tools=TOOLS, temperature=0,
                                                stream=True):
        delta = chunk.choices[0].delta
        reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
        content += delta.content or ""
        calls += delta.tool_calls or []
        finish = chunk.choices[0].finish_reason or finish
    assert reasoning == "Multiply them." and content == "" and finish == "tool_calls"
    assert [(c.index, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        (0, "calculator", {"expression": "17*23"})]


def test_without_tools_the_markup_is_plain_content(client):
    r = client.chat.completions.create(model="tools", messages=BROKEN[:1], temperature=0)
    assert r.choices[0].message.content.startswith("<tool_call>") and r.choices[0].finish_reason == "stop"


def test_bad_tool_call_json_from_the_model_is_reported_not_a_500(client, caplog):
    with caplog.at_level(logging.WARNING, logger="mmlab.server"):
        r = client.chat.completions.create(model="tools", messages=BROKEN[:1], tools=TOOLS, temperature=0)
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="tools", messages=BROKEN[:1], tools=TOOLS, temperature=0, stream=True) if c.choices)
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content == BROKEN[1]["content"] == streamed
    assert sum("tool call that cannot be read" in rec.getMessage() for rec in caplog.records) == 2


def test_enable_thinking_false_and_tool_choice_none(client):
    # no-think: the prompt ends in an empty think block, so no reasoning comes back
    r = client.chat.completions.create(model="tools", messages=ASK, tools=TOOLS, temperature=0, max_tokens=8,
                                       extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert r.choices[0].message.model_extra.get("reasoning_content") is None
    # tool_choice none: the tools are not offered, so no call is parsed
    r = client.chat.completions.create(model="tools", messages=ASK, tools=TOOLS, tool_choice="none", temperature=0,
                                       max_tokens=8)
    assert r.choices[0].message.tool_calls is None


@pytest.mark.parametrize("fields, param", [
    ({"tools": [{"type": "function", "function": {"name": "rm -rf /"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": "calculator"}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"chat_template_kwargs": {"enable_thinking": "yes"}}, "chat_template_kwargs.enable_thinking"),
    ({"chat_template_kwargs": {"jailbreak": True}}, "chat_template_kwargs.jailbreak"),
    ({"messages": ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "calculator", "arguments": "{oops"}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "assistant", "content": None}]}, "messages[0].content"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "tool", "content": "1", "tool_calls": [
        {"type": "function", "function": {"name": "f"}}]}]}, "messages"),
])
def test_bad_tool_fields_are_400s_naming_them(client, fields, param):
    openai = pytest.importorskip("openai")
    body = {"model": "tools", "messages": ASK, **fields}
    with pytest.raises(openai.BadRequestError) as e:
        client.post("/chat/completions", body=body, cast_to=object)
    assert e.value.status_code == 400 and e.value.body["param"] == param, e.value.body
