"""Tools a model may call, and the runner that executes its calls within limits.

A model's tool call is text it wrote (``mmlab.tokenizer.chat.parse_reply`` reads it into a name and
arguments), so the runner treats it as untrusted input:

* nothing the model writes is evaluated as code: the calculator parses its expression with ``ast`` and
  computes only numbers and the operators + - * / // % ** (bounded: no 9**9**9);
* the arguments are checked against the tool's JSON schema (required keys, types, no extra keys) and
  their size is bounded before anything runs;
* each call runs in a forked child process that is killed after ``timeout_s`` (a tool that hangs costs
  one timeout, not the server), and its output is cut at ``max_output_chars``;
* ``run`` never raises: every failure is a ``ToolResult`` with ``ok=False`` and an error the model can read
  (it goes back into the conversation as the tool's response).

The two built-in tools are deterministic, so a reward can check the final answer exactly.
"""

from __future__ import annotations

import ast
import json
import math
import multiprocessing
import operator
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mmlab.tokenizer.chat import ToolCall

JSON_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "number": (int, float), "integer": (int,),
                                           "boolean": (bool,), "object": (dict,), "array": (list,)}


class ToolError(Exception):
    """A call a tool refuses: the message goes back to the model as the tool's response."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # a JSON schema: {"type": "object", "properties": {...}, "required": [...]}
    fn: Callable[..., str]

    def schema(self) -> dict[str, Any]:
        """The OpenAI / chat-template shape: {type: function, function: {name, description, parameters}}."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def check(self, args: Mapping[str, Any]) -> None:
        props = self.parameters.get("properties", {})
        for key in self.parameters.get("required", []):
            if key not in args:
                raise ToolError(f"{self.name}: missing argument {key!r}")
        for key, value in args.items():
            if key not in props:
                raise ToolError(f"{self.name}: unknown argument {key!r} (takes: {', '.join(props)})")
            want = props[key].get("type")
            ok = JSON_TYPES.get(want, (object,))
            if not isinstance(value, ok) or (isinstance(value, bool) and want in ("number", "integer")):
                raise ToolError(f"{self.name}: argument {key!r} must be a {want}, got {type(value).__name__}")


# ---- the calculator ---------------------------------------------------------------------------------
MAX_EXPRESSION = 200  # characters
MAX_MAGNITUDE = 1e18  # every intermediate value
MAX_EXPONENT = 64
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def _number(node: ast.AST) -> float | int:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = node.value
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        value = _UNARY[type(node.op)](_number(node.operand))
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        a, b = _number(node.left), _number(node.right)
        if isinstance(node.op, ast.Pow) and (abs(b) > MAX_EXPONENT or (abs(a) > 1 and abs(b) * math.log10(abs(a))
                                                                     > math.log10(MAX_MAGNITUDE))):
            raise ToolError(f"calculator: {a} ** {b} is too large")
        try:
            value = _BINARY[type(node.op)](a, b)
        except ZeroDivisionError:
            raise ToolError("calculator: division by zero") from None
        if isinstance(value, complex):
            raise ToolError("calculator: the result is not a real number")
    else:
        raise ToolError(f"calculator: only numbers and + - * / // % ** ( ) are allowed, not {type(node).__name__}")
    if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise ToolError("calculator: a value is too large")
    return value


def format_number(value: float | int) -> str:
    """Integers as integers (10/2 -> 5), other numbers to 10 significant digits."""
    if isinstance(value, int):
        return str(value)
    if value.is_integer():
        return str(int(value))
    return f"{value:.10g}"


def calculate(expression: str) -> str:
    if len(expression) > MAX_EXPRESSION:
        raise ToolError(f"calculator: the expression is longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.replace("^", "**").replace("×", "*").replace("÷", "/"), mode="eval")
    except SyntaxError:
        raise ToolError(f"calculator: cannot read {expression!r} as arithmetic") from None
    return format_number(_number(tree.body))


CALCULATOR = Tool(
    "calculator", "Evaluate an arithmetic expression with + - * / // % ** and parentheses.",
    {"type": "object", "properties": {"expression": {"type": "string", "description": "e.g. (17 + 4) * 3"}},
     "required": ["expression"]},
    calculate)


# ---- unit conversion -----------------------------------------------------------------------------------
UNITS: dict[str, tuple[str, float]] = {  # unit -> (dimension, size in the dimension's base unit)
    "mm": ("length", 1e-3), "cm": ("length", 1e-2), "m": ("length", 1.0), "km": ("length", 1e3),
    "in": ("length", 0.0254), "ft": ("length", 0.3048), "yd": ("length", 0.9144), "mi": ("length", 1609.344),
    "g": ("mass", 1e-3), "kg": ("mass", 1.0), "lb": ("mass", 0.45359237), "oz": ("mass", 0.028349523125),
    "s": ("time", 1.0), "min": ("time", 60.0), "h": ("time", 3600.0), "day": ("time", 86400.0),
    "week": ("time", 604800.0), "ml": ("volume", 1e-3), "l": ("volume", 1.0),
}


def convert_units(value: float, from_unit: str, to_unit: str) -> str:
    for u in (from_unit, to_unit):
        if u not in UNITS:
            raise ToolError(f"convert_units: unknown unit {u!r} (known: {', '.join(UNITS)})")
    (da, a), (db, b) = UNITS[from_unit], UNITS[to_unit]
    if da != db:
        raise ToolError(f"convert_units: cannot convert {da} ({from_unit}) to {db} ({to_unit})")
    if abs(value) > MAX_MAGNITUDE:
        raise ToolError("convert_units: the value is too large")
    return format_number(round(value * a / b, 10))


UNIT_CONVERTER = Tool(
    "convert_units", "Convert a quantity between units of length, mass, time or volume.",
    {"type": "object", "properties": {"value": {"type": "number"}, "from_unit": {"type": "string"},
                                      "to_unit": {"type": "string"}},
     "required": ["value", "from_unit", "to_unit"]},
    convert_units)

BUILTIN_TOOLS = (CALCULATOR, UNIT_CONVERTER)


# ---- the runner -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToolResult:
    name: str
    ok: bool
    content: str  # what goes back to the model: the output, or "error: ..."
    seconds: float = 0.0


def _child(fn: Callable[..., str], args: dict[str, Any], conn: Any) -> None:
    try:
        conn.send((True, str(fn(**args))))
    except ToolError as e:
        conn.send((False, str(e)))
    except Exception as e:  # a bug in a tool is the tool's error, reported to the model
        conn.send((False, f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


class ToolRunner:
    """Runs a model's tool calls with ``tools``, each in a forked process with a time limit (``isolate``;
    without it, in this process: only for tools known to be fast, e.g. in tests of the loop itself)."""

    def __init__(self, tools: Sequence[Tool] = BUILTIN_TOOLS, timeout_s: float = 2.0, max_args_bytes: int = 1024,
                 max_output_chars: int = 1024, isolate: bool = True):
        self.tools = {t.name: t for t in tools}
        self.timeout_s, self.max_args_bytes, self.max_output_chars = timeout_s, max_args_bytes, max_output_chars
        self.isolate = isolate and "fork" in multiprocessing.get_all_start_methods()

    def schemas(self) -> list[dict[str, Any]]:
        return [t.schema() for t in self.tools.values()]

    def run(self, call: ToolCall | Mapping[str, Any]) -> ToolResult:
        """Execute one call; never raises."""
        start = time.perf_counter()
        name = call.name if isinstance(call, ToolCall) else str(call.get("name"))
        args = call.arguments if isinstance(call, ToolCall) else call.get("arguments", {})
        try:
            ok, out = True, self._run(name, args)
        except ToolError as e:
            ok, out = False, str(e)
        if len(out) > self.max_output_chars:
            out = out[: self.max_output_chars] + f"... [cut at {self.max_output_chars} characters]"
        return ToolResult(name, ok, out if ok else f"error: {out}", time.perf_counter() - start)

    def _run(self, name: str, args: Any) -> str:
        tool = self.tools.get(name)
        if tool is None:
            raise ToolError(f"unknown tool {name!r} (available: {', '.join(self.tools) or 'none'})")
        if not isinstance(args, dict):
            raise ToolError(f"{name}: arguments must be an object")
        size = len(json.dumps(args, ensure_ascii=False).encode())
        if size > self.max_args_bytes:
            raise ToolError(f"{name}: arguments of {size:,} bytes exceed the limit of {self.max_args_bytes:,}")
        tool.check(args)
        if not self.isolate:
            return str(tool.fn(**args))
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(tool.fn, args, child), daemon=True)
        proc.start()
        child.close()
        try:
            if not parent.poll(self.timeout_s):
                raise ToolError(f"{name}: timed out after {self.timeout_s:g} s")
            ok, out = parent.recv()
        except EOFError:
            raise ToolError(f"{name}: the tool process died without an answer (exit code {proc.exitcode})") from None
        finally:
            parent.close()
            if proc.is_alive():
                proc.kill()
            proc.join(1.0)
        if not ok:
            raise ToolError(out)
        return out
