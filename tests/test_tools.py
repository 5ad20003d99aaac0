"""The tool runner: the calculator computes arithmetic and nothing else, arguments are checked against the
schema and bounded, a slow tool times out, a crashing one is reported, and run() never raises."""

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmlab.tokenizer.chat import ToolCall
from mmlab.tools import BUILTIN_TOOLS, CALCULATOR, Tool, ToolError, ToolRunner, calculate, convert_units

RUNNER = ToolRunner()


@pytest.mark.parametrize("expr, want", [("17*23", "391"), ("(2 + 3) * 4", "20"), ("10/4", "2.5"), ("10/2", "5"),
                                        ("-3 ** 2", "-9"), ("7 // 2", "3"), ("7 % 3", "1"), ("2^10", "1024"),
                                        ("1/3", "0.3333333333"), ("1e3 + 1", "1001")])
def test_the_calculator_computes_arithmetic(expr, want):
    assert calculate(expr) == want


@pytest.mark.parametrize("expr, why", [
    ("__import__('os').system('echo hacked')", "not Call"),
    ("open('/etc/passwd').read()", "not Call"),
    ("x + 1", "not Name"),
    ("(1).__class__", "not Attribute"),
    ("[1, 2]", "not List"),
    ("'a' * 3", "not Constant"),
    ("True + 1", "not Constant"),
    ("9**9**9", "too large"),
    ("10 ** 30", "too large"),
    ("1/0", "division by zero"),
    ("(-1) ** 0.5", "not a real number"),
    ("1 +", "cannot read"),
    ("1+" * 150 + "1", "longer than 200"),
])
def test_the_calculator_refuses_anything_but_bounded_arithmetic(expr, why):
    with pytest.raises(ToolError, match=why):
        calculate(expr)


@settings(max_examples=200, deadline=None)
@given(st.integers(-10**6, 10**6), st.integers(-10**6, 10**6), st.sampled_from("+-*"))
def test_the_calculator_agrees_with_python_on_integers(a, b, op):
    assert calculate(f"{a} {op} ({b})") == str(eval(f"{a} {op} ({b})"))


def test_unit_conversion():
    assert convert_units(3, "km", "m") == "3000"
    assert convert_units(90, "min", "h") == "1.5"
    assert convert_units(1, "lb", "g") == "453.59237"
    with pytest.raises(ToolError, match="cannot convert length"):
        convert_units(1, "km", "kg")
    with pytest.raises(ToolError, match="unknown unit 'parsec'"):
        convert_units(1, "parsec", "m")


def test_the_runner_checks_calls_and_never_raises():
    r = RUNNER.run(ToolCall("calculator", {"expression": "6*7"}))
    assert r.ok and r.content == "42" and r.name == "calculator"
    bad = {
        "nope": ({"name": "nope", "arguments": {}}, "unknown tool 'nope'"),
        "missing": ({"name": "calculator", "arguments": {}}, "missing argument 'expression'"),
        "extra": ({"name": "calculator", "arguments": {"expression": "1", "x": 2}}, "unknown argument 'x'"),
        "type": ({"name": "calculator", "arguments": {"expression": 5}}, "must be a string"),
        "bool as number": ({"name": "convert_units", "arguments": {"value": True, "from_unit": "m", "to_unit": "km"}},
                           "must be a number"),
        "not an object": ({"name": "calculator", "arguments": [1]}, "arguments must be an object"),
        "oversized": ({"name": "calculator", "arguments": {"expression": "1" * 5000}}, "exceed the limit"),
        "unsafe": ({"name": "calculator", "arguments": {"expression": "__import__('os')"}}, "not Call"),
    }
    for label, (call, why) in bad.items():
        r = RUNNER.run(call)
        assert not r.ok and r.content.startswith("error: ") and why in r.content, label


def sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


def crashy() -> str:
    raise RuntimeError("boom")


def chatty() -> str:
    return "x" * 10_000


def test_a_slow_tool_times_out_and_a_crash_is_reported():
    tools = [Tool("sleep", "sleeps", {"type": "object", "properties": {"seconds": {"type": "number"}}}, sleepy),
             Tool("crash", "crashes", {"type": "object", "properties": {}}, crashy),
             Tool("chat", "talks", {"type": "object", "properties": {}}, chatty)]
    runner = ToolRunner(tools, timeout_s=0.3, max_output_chars=100)
    start = time.perf_counter()
    r = runner.run({"name": "sleep", "arguments": {"seconds": 30}})
    assert not r.ok and "timed out after 0.3 s" in r.content and time.perf_counter() - start < 5
    assert runner.run({"name": "sleep", "arguments": {"seconds": 0.01}}).content == "woke"
    r = runner.run({"name": "crash", "arguments": {}})
    assert not r.ok and "RuntimeError: boom" in r.content
    r = runner.run({"name": "chat", "arguments": {}})
    assert r.ok and len(r.content) < 200 and r.content.endswith("[cut at 100 characters]")


def test_schemas_are_openai_shaped():
    names = [s["function"]["name"] for s in ToolRunner().schemas()]
    assert names == [t.name for t in BUILTIN_TOOLS]
    assert CALCULATOR.schema()["type"] == "function" and "expression" in CALCULATOR.parameters["required"]
