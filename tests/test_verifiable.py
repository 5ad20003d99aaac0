"""Verifiable answers for RL: GSM8K parsing and the exact-number reward."""

import json

import pytest

from mmlab.data.registry import DataError
from mmlab.data.verifiable import extract_answer, load_gsm8k, math_reward


def test_reward_reads_the_final_number():
    assert extract_answer("She makes 9 * 2 = $18 a day.\n#### 18") == "18"
    assert extract_answer("so the total is 1,250.00 dollars") == "1250"
    assert extract_answer("no number here") is None
    assert math_reward("The answer is 18.", "18") == 1.0
    assert math_reward("#### 17", "18") == 0.0
    assert math_reward("#### 18 ... actually 19", "18") == 1.0  # a committed '####' answer wins


def test_gsm8k_file_and_errors(tmp_path, mirror_file):
    items = load_gsm8k(mirror_file("gsm8k_test.jsonl"))
    assert len(items) == 1319 and items[0].answer == "18" and "####" not in items[0].solution
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: the answer has no final"):
        load_gsm8k(bad)
