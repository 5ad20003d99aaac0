"""Synthetic tool-use tasks: arithmetic a tiny model cannot do in its head, with a tool that can.

Two kinds, each with levels of difficulty:

- ``mul``: a product, level 1 = 1 digit x 1 digit (81 facts a model can memorise) up to level 4 =
  3 digits x 2 digits (81,000 products: only an algorithm, or a calculator, gets them right);
- ``convert``: a unit conversion, level 1 = a power of ten (km -> m: append zeros), level 2 = an integer
  factor (h -> min: multiply by 60), level 3 = a decimal factor (mi -> km: multiply by 1.609344).

Every task comes as two SFT conversations with the same question and the same final answer:

- ``tool_trace``: the assistant calls ``calculator`` / ``convert_units``, the tool answers, and the
  assistant gives the tool's result as its answer (the model learns to *copy*: the operands into the
  call, the response into the answer);
- ``direct``: the assistant answers at once (the model must *compute* the answer in its weights).

The answer is what the tool itself returns (``mmlab.tools.calculate`` / ``convert_units``), so a
reward or an accuracy is a string comparison. Deterministic from a seed.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmlab.tools import calculate, convert_units

KINDS = ("mul", "convert")
MUL_DIGITS = {1: (1, 1), 2: (2, 1), 3: (2, 2), 4: (3, 2)}  # level -> digits of the two factors
CONVERSIONS = {  # level -> (from, to) unit pairs
    1: (("km", "m"), ("m", "cm"), ("m", "mm"), ("kg", "g"), ("l", "ml"), ("cm", "mm")),
    2: (("h", "min"), ("min", "s"), ("day", "h"), ("week", "day"), ("ft", "in"), ("yd", "ft")),
    3: (("mi", "km"), ("in", "cm"), ("lb", "kg"), ("ft", "m"), ("kg", "lb"), ("oz", "g")),
}
LEVELS = {"mul": tuple(MUL_DIGITS), "convert": tuple(CONVERSIONS)}
MUL_PROMPTS = ("What is {a}*{b}?", "Multiply {a} by {b}.", "Compute {a} times {b}.")
CONVERT_PROMPTS = ("Convert {v} {f} to {t}.", "How many {t} is {v} {f}?")


@dataclass(frozen=True)
class ToolTask:
    kind: str  # "mul" | "convert"
    level: int  # 1 = easiest
    prompt: str
    answer: str  # what the tool returns, and so the exact answer
    tool: str  # the tool that computes it
    arguments: dict[str, Any]

    @property
    def label(self) -> str:
        """A short description of the difficulty, e.g. ``mul 3d x 2d`` or ``convert decimal factor``."""
        if self.kind == "mul":
            a, b = MUL_DIGITS[self.level]
            return f"mul {a}d x {b}d"
        return "convert " + {1: "power of ten", 2: "integer factor", 3: "decimal factor"}[self.level]

    def messages(self) -> list[dict[str, Any]]:
        return [{"role": "user", "content": self.prompt}]

    def tool_call(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.tool, "arguments": dict(self.arguments)}}

    def tool_trace(self) -> list[dict[str, Any]]:
        """The SFT conversation that calls the tool and answers from its response."""
        return [*self.messages(), {"role": "assistant", "content": "", "tool_calls": [self.tool_call()]},
                {"role": "tool", "content": self.answer}, {"role": "assistant", "content": self.answer}]

    def direct(self) -> list[dict[str, Any]]:
        """The SFT conversation that answers at once, with no tool."""
        return [*self.messages(), {"role": "assistant", "content": self.answer}]

    def is_correct(self, text: str | None) -> bool:
        return text is not None and text.strip() == self.answer


def _number(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1) if digits > 1 else 2, 10**digits - 1)


def make_task(kind: str, level: int, rng: random.Random) -> ToolTask:
    if kind == "mul":
        da, db = MUL_DIGITS[level]
        a, b = _number(rng, da), _number(rng, db)
        expression = f"{a}*{b}"
        return ToolTask("mul", level, rng.choice(MUL_PROMPTS).format(a=a, b=b), calculate(expression), "calculator",
                        {"expression": expression})
    if kind == "convert":
        f, t = rng.choice(CONVERSIONS[level])
        v = rng.randint(2, 99)
        return ToolTask("convert", level, rng.choice(CONVERT_PROMPTS).format(v=v, f=f, t=t), convert_units(v, f, t),
                        "convert_units", {"value": v, "from_unit": f, "to_unit": t})
    raise ValueError(f"kind={kind!r} is not one of: {', '.join(KINDS)}")


def make_tool_tasks(n: int, seed: int = 0, kinds: Sequence[str] = KINDS,
                    levels: Sequence[int] | None = None) -> list[ToolTask]:
    """``n`` tasks, each of a kind and a level drawn uniformly (``levels``: only those levels)."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ValueError(f"kinds {unknown or list(kinds)!r}: choose from {', '.join(KINDS)}")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.choice(list(kinds))
        choices = [lv for lv in LEVELS[kind] if levels is None or lv in levels]
        if not choices:
            raise ValueError(f"no level of {kind} in {list(levels or [])}")
        out.append(make_task(kind, rng.choice(choices), rng))
    return out


def heldout_tool_tasks(n: int, seed: int, train: Sequence[ToolTask], kinds: Sequence[str] = KINDS) -> list[ToolTask]:
    """About ``n`` distinct tasks from another seed, the same number at every (kind, level), none with a prompt
    of ``train``, except at ``mul`` level 1: its 64 products (192 prompts) are all in any sizeable training
    set, so there held-out items measure memory. A level whose unseen prompts run out has fewer."""
    seen = {t.prompt for t in train}
    cells = [(k, lv) for k in kinds for lv in LEVELS[k]]
    quota = -(-n // len(cells))
    kept: dict[tuple[str, int], list[ToolTask]] = {c: [] for c in cells}
    prompts: set[str] = set()
    for t in make_tool_tasks(60 * n, seed=seed, kinds=kinds):
        cell = kept[(t.kind, t.level)]
        if len(cell) < quota and t.prompt not in prompts and (t.prompt not in seen or (t.kind, t.level) == ("mul", 1)):
            cell.append(t)
            prompts.add(t.prompt)
    return [t for c in cells for t in kept[c]][:n]


STYLES = ("tool", "direct")


def write_jsonl(path: str | Path, tasks: Sequence[ToolTask], style: str = "tool") -> Path:
    """Write the tasks' SFT conversations (``style`` "tool": ``tool_trace``; "direct": ``direct``) as JSONL
    for ``mmlab train sft --data PATH``; written to a temporary name first, so a failure leaves no half file."""
    if style not in STYLES:
        raise ValueError(f"style={style!r}: choose from {', '.join(STYLES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for t in tasks:
            f.write(json.dumps({"messages": t.tool_trace() if style == "tool" else t.direct()}) + "\n")
    tmp.replace(path)
    return path


def parse_kinds(text: str | None) -> tuple[str, ...]:
    """``"mul,convert"`` -> ("mul", "convert"); None -> every kind; an unknown kind is an error naming it."""
    if text is None:
        return KINDS
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ValueError(f"kinds {text!r}: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(KINDS)}")
    return kinds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmlab.data.tool_tasks", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    parser.add_argument("--n", type=int, default=20_000, help="number of tasks")
    parser.add_argument("--style", choices=STYLES, default="tool",
                        help="tool: call the tool and answer from its response (default); direct: answer at once")
    parser.add_argument("--kinds", default=None, help=f"comma-separated: {', '.join(KINDS)} (default: both)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n {args.n}: must be >= 1")
    try:
        kinds = parse_kinds(args.kinds)
    except ValueError as e:
        parser.error(f"--kinds: {e}")
    path = write_jsonl(args.out, make_tool_tasks(args.n, seed=args.seed, kinds=kinds), args.style)
    print(f"wrote {args.n} {args.style} conversations to {path} (train on it: mmlab train sft --base BASE "
          f"--data {path} --out DIR; then mmlab train agent-rl --base DIR --out DIR2)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
