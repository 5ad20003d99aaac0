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


@pytest.mark.parametrize("text, expected", [
    ("1,2,3", "3"),  # three numbers, not one thousands-separated number
    ("for ages 3-5", "5"),  # a range, not minus five
    ("#### $18 (3 boxes)", "18"),  # the committed answer after ####, currency sign allowed
    ("half is .5", "0.5"),
    ("it costs 1,000 dollars", "1000"),
    ("#### -7", "-7"),
    ("so x = 3.50.", "3.5"),
    ("#### 1,234,567", "1234567"),
    ("no number here", None),
])
def test_extract_answer_reads_numbers_as_a_person_would(text, expected):
    assert extract_answer(text) == expected


def test_reward_compares_values_not_spellings():
    assert math_reward("#### 0.50", ".5") == 1.0
    assert math_reward("#### 1,000", "1000.0") == 1.0
    assert math_reward("#### 18", "18.5") == 0.0
