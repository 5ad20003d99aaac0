"""Reasoning data, the think-format reward, the think / no-think switch and budgeted thinking: traces whose
arithmetic checks out, rewards for each malformed case, prompts that differ by exactly the empty think block,
and a tiny SFT on traces that learns to think in the format."""

import ast
import json
import operator
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmlab.config import ModelConfig
from mmlab.data.reasoning import (
    ReasoningProblem,
    check_trace,
    evaluate_chain,
    heldout_problems,
    make_problem,
    make_problems,
    records,
    write_jsonl,
)
from mmlab.data.sft import SFTBatches, encode_examples, load_conversations
from mmlab.model.lm import MiniMindLM
from mmlab.tokenizer.base import SPECIAL_TOKENS
from mmlab.tokenizer.char import CharTokenizer
from mmlab.tokenizer.chat import NO_THINK, encode_chat, render_chat
from mmlab.train.grpo import REWARDS, reasoning_prompts, reply_answer, think_format_ok, think_reward

OPS = {ast.Add: operator.add, ast.Sub: operator.sub}


def safe_eval(expression: str) -> int:
    """An independent check: Python's own parse of the expression, evaluated over + and - only."""
    def ev(node):
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            return OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise ValueError(ast.dump(node))

    return ev(ast.parse(expression, mode="eval").body)


# ---- problems and traces ----------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 10**6), n_steps=st.integers(1, 6), kind=st.sampled_from(["arithmetic", "word"]))
def test_every_trace_checks_out_and_the_answer_is_the_expression(seed, n_steps, kind):
    p = make_problem(random.Random(seed), n_steps, kind)
    assert p.n_steps == n_steps and len(p.trace().split(". ")) == n_steps
    assert check_trace(p.trace(), p.expression())
    assert p.answer == str(safe_eval(p.expression())) == str(evaluate_chain(p.expression()))
    assert all(s.result >= 0 for s in p.steps)  # never a negative intermediate
    for i, s in enumerate(p.steps):  # each step starts from the last result
        assert s.left == (p.steps[i - 1].result if i else p.steps[0].left)
        assert s.result == OPS[ast.Add if s.op == "+" else ast.Sub](s.left, s.right)
    if kind == "arithmetic":
        assert p.prompt == f"What is {p.expression()}?"
    else:
        assert p.prompt.endswith("have now?") and str(p.steps[0].left) in p.prompt


def test_check_trace_rejects_wrong_arithmetic_broken_chains_and_other_expressions():
    assert check_trace("17 + 8 = 25. 25 - 9 = 16.", "17 + 8 - 9")
    assert not check_trace("17 + 8 = 26. 26 - 9 = 17.")  # 17 + 8 is not 26
    assert not check_trace("17 + 8 = 25. 24 - 9 = 15.")  # the second step does not start from 25
    assert not check_trace("17 + 8 = 25. 25 - 9 = 16.", "17 + 8 - 8")  # right arithmetic, other problem
    assert not check_trace("17 + 8 = 25 and then some")
    assert not check_trace("")
    with pytest.raises(ValueError):
        evaluate_chain("2 * 3")


def test_problems_are_deterministic_balanced_and_heldout_is_unseen():
    a, b = make_problems(40, seed=3), make_problems(40, seed=3)
    assert a == b and a != make_problems(40, seed=4)
    assert [p.n_steps for p in a[:8]] == [1, 2, 3, 4, 1, 2, 3, 4]
    held = heldout_problems(40, seed=99, train=a, steps=(2, 5))
    assert {p.n_steps for p in held} == {2, 5} and not {p.prompt for p in held} & {p.prompt for p in a}
    assert len({p.prompt for p in held}) == len(held)


def test_messages_carry_the_trace_as_reasoning_and_no_think_is_an_empty_block(tmp_path):
    p = ReasoningProblem("arithmetic", "What is 3 + 4?", make_problem(random.Random(0), 1).steps)
    think, plain = p.messages(think=True), p.messages(think=False)
    assert think[1] == {"role": "assistant", "reasoning_content": p.trace(), "content": p.answer}
    assert plain[1]["reasoning_content"] == ""
    assert render_chat(think).endswith(f"<think>\n{p.trace()}\n</think>\n\n{p.answer}<|im_end|>\n")
    # the no-think variant is exactly the empty block that enable_thinking=False puts in a prompt
    assert render_chat(plain).endswith(f"<|im_start|>assistant\n{NO_THINK}{p.answer}<|im_end|>\n")
    path = write_jsonl(tmp_path / "r.jsonl", make_problems(20, seed=0), no_think_share=0.5)
    convs = load_conversations(path)  # the SFT loader keeps the reasoning as a field
    shares = [c[1]["reasoning_content"] == "" for c in convs]
    assert len(convs) == 20 and 0 < sum(shares) < 20
    assert all(json.loads(line)["messages"][0]["role"] == "user" for line in path.read_text().splitlines())
    assert all(r["messages"][1]["reasoning_content"] for r in records(make_problems(5), no_think_share=0.0))
    with pytest.raises(ValueError):
        records(make_problems(2), no_think_share=2)


def test_the_cli_writes_a_file_sft_reads(tmp_path, capsys):
    from mmlab.data.reasoning import main

    assert main(["--out", str(tmp_path / "x.jsonl"), "--n", "12", "--steps", "2-3", "--kinds", "arithmetic,word"]) == 0
    convs = load_conversations(tmp_path / "x.jsonl")
    assert len(convs) == 12 and {c[1]["reasoning_content"].count(". ") + 1 for c in convs} == {2, 3}
    assert "mmlab train sft" in capsys.readouterr().out


# ---- the reward -------------------------------------------------------------------------------
@pytest.mark.parametrize("completion, finished, reward", [
    ("<think>\n2 + 3 = 5.\n</think>\n\n5", True, 1.1),  # right, in the format
    ("<think>\n2 + 3 = 6.\n</think>\n\n6", True, 0.1),  # wrong answer, right format
    ("<think>\n2 + 3 = 5.\n</think>\n\n5", False, 1.0),  # ran into the length limit: no format reward
    ("5", True, 1.0),  # right, but no think block
    ("<think>\n\n</think>\n\n5", True, 1.0),  # an empty think block is not reasoning
    ("<think>\n2 + 3 = 5.\n5", True, 0.0),  # never closed: all of it is reasoning, there is no answer
    ("2 + 3 = 5.\n</think>\n\n5", True, 0.0),  # closed but never opened: the answer is not just "5"
    ("<think>\n2 + 3 = 5.\n</think>\n\n5 because 2 + 3 = 5", True, 0.0),  # more than the answer
    ("<think>\n2 + 3 = 5.\n</think>\n\n<think>\nagain\n</think>\n\n5", True, 0.0),  # a second think block
    ("<think>\n<think>\n2 + 3 = 5.\n</think>\n\n5", True, 1.0),  # nested opening: right answer, bad format
    ("\n<think>\n2 + 3 = 5.\n</think>\n\n 5 ", True, 1.1),  # leading newline and spaces are trimmed
])
def test_think_reward_checks_format_and_correctness(completion, finished, reward):
    assert think_reward(completion, "5", finished) == pytest.approx(reward)
    assert think_format_ok(completion, finished) == (round(reward * 10) % 10 == 1)
    assert REWARDS["think"] is think_reward


def test_the_answer_is_what_follows_the_think_block():
    assert reply_answer("<think>\n1 + 1 = 2.\n</think>\n\n2") == "2"
    assert reply_answer(" 42 ") == "42" and reply_answer("<think>\nunfinished") == ""
    prompts = reasoning_prompts(8, seed=1)
    assert all(p.answer == str(evaluate_chain(p.messages[0]["content"][8:-1])) for p in prompts)


# ---- the switch -------------------------------------------------------------------------------
def _char_tokenizer(problems):
    text = "".join(render_chat(p.messages(t)) for p in problems for t in (True, False))
    return CharTokenizer.from_corpus(text + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .?\n<>/",
                                     special_tokens=SPECIAL_TOKENS)


def test_think_switch_changes_the_prompt_by_the_empty_block_only():
    p = make_problems(1, seed=0)[0]
    tok = _char_tokenizer([p])
    msgs = [{"role": "user", "content": p.prompt}]
    on, _ = encode_chat(tok, msgs, add_generation_prompt=True)
    off, _ = encode_chat(tok, msgs, add_generation_prompt=True, enable_thinking=False)
    assert off[:len(on)] == on and tok.decode(off[len(on):]) == NO_THINK
    # and the no-think prompt is the prefix of the no-think training example: training and inference agree
    train_ids, mask = encode_chat(tok, p.messages(think=False))
    assert train_ids[:len(off)] == off and all(mask[len(on):len(off)])  # in training the empty block is a target


# ---- learning ---------------------------------------------------------------------------------
def _train(model, tok, problems, steps, out, lr=3e-3):
    from mmlab.train.config import TrainConfig
    from mmlab.train.trainer import NextTokenLoss, Trainer

    examples = encode_examples(tok, [p.messages(True) for p in problems])
    source = SFTBatches(examples, examples[:32], pad_id=0, mode="pad", block_size=model.cfg.max_seq_len)
    cfg = TrainConfig(out_dir=str(out), max_iters=steps, batch_size=32, lr=lr, warmup_iters=10, eval_interval=steps,
                      eval_batches=1, log_interval=steps, weight_decay=0.0, progress=False, save_checkpoints=False,
                      plot=False, device="cpu")
    return Trainer(model, NextTokenLoss(), source, cfg).fit()


def test_tiny_sft_on_traces_learns_to_think_in_the_format_and_answer(tmp_path):
    """Seconds: 1-2 step problems on numbers up to 4, a 2-layer model, characters."""
    from mmlab.infer.thinking import budget_replies, replies

    torch.manual_seed(0)
    problems = make_problems(600, steps=(1, 2), seed=0, max_start=4, max_operand=2)
    tok = _char_tokenizer(problems)
    model = MiniMindLM(ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                   max_seq_len=128))
    convs = [[{"role": "user", "content": p.prompt}] for p in problems[:24]]
    before = replies(model, tok, convs, think=True, max_new_tokens=50)
    result = _train(model, tok, problems, 300, tmp_path, lr=5e-3)
    assert result.final_val_loss < 0.4, result.final_val_loss
    after = replies(model, tok, convs, think=True, max_new_tokens=50)
    formatted = [think_format_ok(r.text, r.finished) for r in after]
    # the answer is the last result of its own trace: it learned to answer from what it thought
    consistent = [r.answer == (r.reasoning or "").rstrip(".").rpartition("= ")[2] != "" for r in after]
    assert sum(formatted) >= 20 and sum(consistent) >= 20, [r.text for r in after[:4]]
    assert sum(think_format_ok(r.text, r.finished) for r in before) == 0
    assert all(r.think_tokens > 0 and r.closed for r, ok in zip(after, formatted, strict=True) if ok)
    # thinking off: the prompt carries the empty block, no thinking tokens are spent
    off = replies(model, tok, convs, think=False, max_new_tokens=12)
    assert all(r.think_tokens == 0 and r.reasoning is None for r in off)
    # a budget of 0 is thinking off; a budget the model never reaches changes nothing
    by_budget = budget_replies(model, tok, convs, [0, 2, 1000], think=True, max_new_tokens=50)
    assert sum(r.forced for r in by_budget[0]) >= 20
    assert all(r.think_tokens == 0 and r.text.startswith(NO_THINK) for r in by_budget[0] if r.forced)
    assert all(r.think_tokens <= 2 for r in by_budget[2])
    assert [r.text for r in by_budget[1000]] == [r.text for r in after]
