"""The agent loop, the tool-use tasks and multi-turn RL: a scripted model's calls are really run by the ToolRunner,
the episode's mask is 1 exactly on the model's tokens (equal to the chat template's SFT mask), max_turns and
max_new_tokens end an episode, bad tool-call JSON is reported in the transcript; CISPO against a hand-computed
example; a tiny multi-turn GRPO / CISPO step runs and trains only on the model's tokens."""

import json
import math
import types

import pytest
import torch

from mmlab.config import ModelConfig
from mmlab.data.tool_tasks import KINDS, LEVELS, heldout_tool_tasks, make_tool_tasks
from mmlab.infer.agent import run_agent
from mmlab.model import MiniMindLM
from mmlab.model.lm import IGNORE_INDEX
from mmlab.tokenizer import encode_chat, train_bpe
from mmlab.tokenizer.chat import IM_END, render_chat
from mmlab.tools import ToolRunner
from mmlab.train.agent_rl import (
    AgentRLLoss,
    AgentRolloutSource,
    agent_rl,
    answer_reward,
    cispo_policy_loss,
    episode_rows,
)
from mmlab.train.grpo import RLPrompt, clipped_policy_loss

CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "347*58"}}\n</tool_call>'
ASK = [{"role": "user", "content": "What is 347*58?"}]


@pytest.fixture(scope="module")
def tok():
    tasks = make_tool_tasks(60, seed=1)
    corpus = [render_chat(t.tool_trace()) for t in tasks] + [CALL, "error: could not read"] * 5
    return train_bpe(corpus, vocab_size=400)


class ScriptedModel(torch.nn.Module):
    """Writes the scripted replies, one per turn, token by token (each ends with <|im_end|> unless ``open``)."""

    def __init__(self, tok, replies, open_last=False, max_seq_len=2048):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.cfg = types.SimpleNamespace(vocab_size=tok.vocab_size, max_seq_len=max_seq_len, causal=False)
        stop = tok.token_to_id(IM_END)
        self.queue = [tok.encode(r) + ([] if open_last and i == len(replies) - 1 else [stop])
                      for i, r in enumerate(replies)]
        self.queue = [t for reply in self.queue for t in reply]  # one stream: generate stops at each <|im_end|>

    def forward(self, idx, cache=None):
        logits = torch.full((idx.size(0), idx.size(1), self.cfg.vocab_size), -1e9)
        logits[:, -1, self.queue.pop(0) if self.queue else 0] = 0.0
        return types.SimpleNamespace(logits=logits)


def test_a_call_is_run_and_the_observation_is_masked(tok):
    ep = run_agent(ScriptedModel(tok, [CALL, "20126"]), tok, ASK, ToolRunner(), show_tools=False)
    assert ep.stop == "answer" and ep.answer == "20126" and len(ep.turns) == 2
    assert ep.n_calls == 1 and ep.n_bad_calls == 0 and ep.n_tool_errors == 0
    assert ep.turns[0].results[0].content == "20126" == str(347 * 58)  # the runner computed it
    assert [m["role"] for m in ep.messages] == ["user", "assistant", "tool", "assistant"]
    assert ep.messages[1]["tool_calls"][0]["function"] == {"name": "calculator", "arguments": {"expression": "347*58"}}
    # the mask is 1 exactly on the tokens the model wrote, and those are where the turns say
    assert sum(ep.mask) == sum(len(t.tokens) for t in ep.turns)
    for t in ep.turns:
        assert ep.ids[t.start:t.start + len(t.tokens)] == t.tokens and all(ep.mask[t.start:t.start + len(t.tokens)])
    # ... and equal to the chat template's own encoding and SFT mask (tool response: 0)
    full_ids, full_mask = encode_chat(tok, ep.messages)
    assert full_ids[:len(ep.ids)] == ep.ids and full_mask[:len(ep.ids)] == ep.mask
    obs = ep.ids[ep.turns[0].start + len(ep.turns[0].tokens):ep.turns[1].start]
    assert "<tool_response>\n20126\n</tool_response>" in tok.decode(obs)
    assert not any(ep.mask[ep.turns[0].start + len(ep.turns[0].tokens):ep.turns[1].start])
    x, y = episode_rows(ep)
    assert len(x) == len(y) == len(ep.ids) - 1
    assert [t for t in y if t != IGNORE_INDEX] == [t for turn in ep.turns for t in turn.tokens]


def test_tool_schemas_go_into_the_system_turn_when_shown(tok):
    ep = run_agent(ScriptedModel(tok, ["5"]), tok, ASK, ToolRunner(), show_tools=True)
    assert "<tools>" in tok.decode(ep.ids) and ep.answer == "5" and ep.n_calls == 0
    # a context with no room left to write ends the episode before any turn
    full = run_agent(ScriptedModel(tok, ["5"], max_seq_len=64), tok, ASK, ToolRunner(), show_tools=True)
    assert full.stop == "context" and not full.turns and full.answer is None
    # a tool response that does not fit ends the episode with the context it has (never past max_seq_len)
    room = len(encode_chat(tok, ASK, add_generation_prompt=True)[0]) + len(tok.encode(CALL)) + 4
    cut = run_agent(ScriptedModel(tok, [CALL, "20126"], max_seq_len=room), tok, ASK, ToolRunner(), show_tools=False)
    assert cut.stop == "context" and len(cut.ids) <= room and cut.messages[-1]["role"] == "tool" and cut.n_calls == 1


def test_max_turns_is_respected(tok):
    ep = run_agent(ScriptedModel(tok, [CALL] * 5), tok, ASK, ToolRunner(), max_turns=2, show_tools=False)
    assert ep.stop == "max_turns" and ep.answer is None and len(ep.turns) == 2 and ep.n_calls == 2
    assert ep.messages[-1]["role"] == "tool"  # the last turn's call still ran
    assert answer_reward(ep, "20126") == 0.0


def test_bad_tool_call_json_is_reported_in_the_transcript(tok):
    bad = '<tool_call>\n{"name": calculator\n</tool_call>'
    ep = run_agent(ScriptedModel(tok, [bad, "ok"]), tok, ASK, ToolRunner(), show_tools=False)
    assert ep.n_bad_calls == 1 and ep.n_calls == 0 and ep.answer == "ok" and ep.stop == "answer"
    assert ep.messages[1]["content"] == bad  # kept as written
    assert ep.messages[2]["role"] == "tool" and ep.messages[2]["content"].startswith("error: could not read")
    assert "not valid JSON" in ep.turns[0].reply.errors[0]


def test_a_refused_call_is_a_tool_error_and_a_long_turn_ends_the_episode(tok):
    unknown = '<tool_call>\n{"name": "rm", "arguments": {}}\n</tool_call>'
    ep = run_agent(ScriptedModel(tok, [unknown, "1"]), tok, ASK, ToolRunner(), show_tools=False)
    assert ep.n_tool_errors == 1 and ep.messages[2]["content"].startswith("error: unknown tool")
    long = run_agent(ScriptedModel(tok, ["1 2 3 4 5 6 7 8 9 10 11 12"], open_last=True), tok, ASK, ToolRunner(),
                     max_new_tokens=4, show_tools=False)
    assert long.stop == "length" and long.answer is None and len(long.turns[0].tokens) == 4
    assert not long.turns[0].finished


def test_tool_tasks_answers_are_the_tools_results():
    tasks = make_tool_tasks(200, seed=0)
    assert tasks == make_tool_tasks(200, seed=0)
    assert {(t.kind, t.level) for t in tasks} == {(k, lv) for k in KINDS for lv in LEVELS[k]}
    runner = ToolRunner(isolate=False)
    for t in tasks[:40]:
        result = runner.run({"name": t.tool, "arguments": t.arguments})
        assert result.ok and result.content == t.answer and t.is_correct(f" {t.answer} ")
        trace = t.tool_trace()
        assert trace[-1]["content"] == trace[2]["content"] == t.answer and t.direct()[-1]["content"] == t.answer
    big = [t for t in tasks if t.kind == "mul" and t.level == 4]
    assert all(100 <= int(t.arguments["expression"].split("*")[0]) <= 999 for t in big)
    held = heldout_tool_tasks(100, seed=5, train=tasks)
    seen = {t.prompt for t in tasks}
    assert len(held) == 100 and all(t.prompt not in seen or (t.kind, t.level) == ("mul", 1) for t in held)


def test_cispo_against_a_hand_computed_example():
    # two tokens of one completion with A = +1; the policy now gives them 0.5 and 0.2, the sampler gave 0.25, 0.4
    logp = torch.log(torch.tensor([[0.5, 0.2]])).requires_grad_(True)
    old = torch.log(torch.tensor([[0.25, 0.4]]))  # ratios 2.0 and 0.5
    adv = torch.tensor([[1.0]])
    per_token, capped = cispo_policy_loss(logp, old, adv, eps_high=0.5)
    # weights: min(2.0, 1.5) = 1.5 and min(0.5, 1.5) = 0.5, detached; loss = -w * A * logp
    assert per_token.detach().tolist()[0] == pytest.approx([-1.5 * math.log(0.5), -0.5 * math.log(0.2)])
    assert capped.tolist() == [[1.0, 0.0]]
    per_token.sum().backward()
    assert logp.grad.tolist()[0] == pytest.approx([-1.5, -0.5])  # every token keeps a gradient, -w * A
    # GRPO's clip (eps 0.2) drops the first token: its ratio 2.0 > 1.2 with A > 0 leaves a constant
    logp2 = logp.detach().clone().requires_grad_(True)
    grpo, _ = clipped_policy_loss(logp2, old, adv, 0.2)
    grpo.sum().backward()
    assert logp2.grad.tolist()[0] == pytest.approx([0.0, -0.5])
    # a negative advantage: CISPO pushes both tokens down with the same weights
    logp3 = logp.detach().clone().requires_grad_(True)
    neg, _ = cispo_policy_loss(logp3, old, -adv, eps_high=0.5)
    neg.sum().backward()
    assert logp3.grad.tolist()[0] == pytest.approx([1.5, 0.5])


def tiny_model(tok):
    torch.manual_seed(0)
    return MiniMindLM(ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                  max_seq_len=160))


def test_grpo_and_cispo_have_the_same_gradient_on_a_rollouts_first_use(tok):
    model = tiny_model(tok)
    source = AgentRolloutSource(model, tok, [RLPrompt(ASK, "20126")], ToolRunner(isolate=False), group_size=2,
                                max_turns=2, max_new_tokens=6)
    batch = source.sample("train", 1, torch.Generator().manual_seed(0))
    batch = (batch[0], batch[1], torch.tensor([1.0, -1.0]), batch[3])  # force a signal
    grads = []
    for loss in ("grpo", "cispo"):
        model.zero_grad()
        loss_sum, n, _ = AgentRLLoss(loss)(model, batch)
        (loss_sum / n).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_a_tiny_multi_turn_rl_run(tok, tmp_path):
    from mmlab.train.checkpoint import save_checkpoint
    from mmlab.train.config import TrainConfig

    save_checkpoint(tmp_path / "base" / "ckpt", tiny_model(tok), tok)
    tasks = make_tool_tasks(6, seed=2)
    train = [RLPrompt(t.messages(), t.answer) for t in tasks[:4]]
    held = [RLPrompt(t.messages(), t.answer) for t in tasks[4:]]
    for loss in ("grpo", "cispo"):
        cfg = TrainConfig(out_dir=str(tmp_path / loss), max_iters=2, batch_size=2, lr=1e-3, warmup_iters=1,
                          eval_interval=2, device="cpu", progress=False, seed=0)
        r = agent_rl(tmp_path / "base", cfg, train, held, loss=loss, group_size=2, ppo_epochs=2, max_turns=2,
                     max_new_tokens=8, runner=ToolRunner(isolate=False))
        assert r["steps"] == 2 and len(r["rollouts"]) == 1  # two optimizer steps on one reused rollout
        assert set(r["after"]) >= {"accuracy", "call_validity", "used_tool", "turns", "by_group"}
        saved = json.loads((tmp_path / loss / "agent_rl_eval.json").read_text())
        assert saved["loss"] == loss and saved["before"]["n"] == 2
    # the batch's targets are the model's tokens only: every target position is inside a model turn
    model = tiny_model(tok)
    source = AgentRolloutSource(model, tok, train, ToolRunner(isolate=False), group_size=2, max_turns=2,
                                max_new_tokens=8)
    x, y, adv, old = source.sample("train", 2, torch.Generator().manual_seed(1))
    assert x.shape == y.shape and adv.shape == (4,) and torch.isnan(old).all()
    assert source.history[0]["reward"] == 0.0  # an untrained model answers nothing right


def test_bad_settings_are_one_line_errors(tok):
    from mmlab.errors import ConfigError

    with pytest.raises(ConfigError, match="loss="):
        AgentRLLoss("ppo")
    with pytest.raises(ConfigError, match="eps_high"):
        AgentRLLoss("cispo", eps_high=0.0)
    with pytest.raises(ConfigError, match="group_size"):
        AgentRolloutSource(tiny_model(tok), tok, [RLPrompt(ASK, "1")], ToolRunner(), group_size=1)


def test_the_command_line_writes_traces_and_runs_agent_rl(tok, tmp_path, capsys):
    from mmlab.cli import main
    from mmlab.data import tool_tasks
    from mmlab.data.sft import load_conversations
    from mmlab.train.checkpoint import save_checkpoint

    # python -m mmlab.data.tool_tasks: traces that mmlab train sft reads back (tool turns kept structured)
    assert tool_tasks.main(["--out", str(tmp_path / "traces.jsonl"), "--n", "5", "--kinds", "mul"]) == 0
    convs = load_conversations(str(tmp_path / "traces.jsonl"))
    assert len(convs) == 5 and [m["role"] for m in convs[0]] == ["user", "assistant", "tool", "assistant"]
    assert convs[0][1]["tool_calls"][0]["function"]["name"] == "calculator"
    with pytest.raises(SystemExit):
        tool_tasks.main(["--out", str(tmp_path / "x.jsonl"), "--kinds", "mul,divide"])
    assert "unknown divide" in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()
    # mmlab train agent-rl on a tiny base: a run, its report, the before/after printout
    save_checkpoint(tmp_path / "base" / "ckpt", tiny_model(tok), tok)
    args = ["train", "agent-rl", "--base", str(tmp_path / "base"), "--out", str(tmp_path / "rl"), "--max-iters", "1",
            "--batch-size", "1", "--group-size", "2", "--n-prompts", "4", "--n-heldout", "2", "--max-turns", "2",
            "--max-new-tokens", "6", "--device", "cpu", "--loss", "cispo"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy (2 tasks" in out and "agent_rl_eval.json" in out
    assert json.loads((tmp_path / "rl" / "agent_rl_eval.json").read_text())["loss"] == "cispo"
    assert main(args) != 0  # the run exists: refused, not overwritten
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args[:-2], "--kinds", "div"]) != 0 and "--kinds" in capsys.readouterr().err
