"""Verifiable multi-step problems with step-by-step traces: the data of the reasoning lesson.

Each problem is a chain of additions and subtractions evaluated left to right, asked as arithmetic
("What is 17 + 8 - 9?") or as a small story in the synthetic story world ("Mia has 17 shells. Tom gives
Mia 8 more. ..."). The trace works it out one operation per step,

    17 + 8 = 25. 25 - 9 = 16.

and the answer is the last result ("16"). Everything is deterministic from a seed, every intermediate
result is a non-negative integer, and ``check_trace`` re-does every step, so a trace can be verified as
well as an answer.

As chat data (``ReasoningProblem.messages``) a problem is one user turn and one assistant turn whose
``reasoning_content`` is the trace and whose ``content`` is the answer alone; the template renders the
trace as a ``<think>`` block (``mmlab.tokenizer.chat``). The no-think variant has ``reasoning_content ""``:
an empty think block, exactly what ``enable_thinking=False`` appends to a generation prompt. ``write_jsonl``
writes either (or a mix) as records ``mmlab train sft --data FILE.jsonl`` reads::

    python -m mmlab.data.reasoning --out reasoning.jsonl --n 20000 --steps 1-4 --no-think-share 0.5
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmlab.data.synthetic import NAMES, OBJECTS

KINDS = ("arithmetic", "word")
STEP = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)\.")


@dataclass(frozen=True)
class Step:
    """One operation of a chain: ``left op right = result``."""

    left: int
    op: str  # "+" or "-"
    right: int
    result: int

    def text(self) -> str:
        return f"{self.left} {self.op} {self.right} = {self.result}."


@dataclass(frozen=True)
class ReasoningProblem:
    kind: str  # "arithmetic" or "word"
    prompt: str
    steps: tuple[Step, ...]

    @property
    def answer(self) -> str:
        return str(self.steps[-1].result)

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    @property
    def task(self) -> str:
        """The group this problem is scored in (``mmlab.lab.posttrain.task_accuracy``): its number of steps."""
        return f"{self.n_steps} step{'s' if self.n_steps > 1 else ''}"

    def expression(self) -> str:
        """The chain as one expression, e.g. ``"17 + 8 - 9"`` (its value, left to right, is the answer)."""
        return " ".join([str(self.steps[0].left), *(f"{s.op} {s.right}" for s in self.steps)])

    def trace(self) -> str:
        """The worked solution, one operation per step: ``"17 + 8 = 25. 25 - 9 = 16."``."""
        return " ".join(s.text() for s in self.steps)

    def messages(self, think: bool = True) -> list[dict[str, Any]]:
        """The problem as a conversation: the trace as the assistant's reasoning (``think``), or an empty
        reasoning (the no-think variant, an empty ``<think>`` block), then the bare answer."""
        return [{"role": "user", "content": self.prompt},
                {"role": "assistant", "reasoning_content": self.trace() if think else "", "content": self.answer}]

    def is_correct(self, reply: str) -> bool:
        """Whether a generated reply's answer — what follows the think block, if any — is this answer."""
        from mmlab.tokenizer.chat import parse_reply

        return parse_reply(reply, tools=False).content.strip() == self.answer


# ---- generating problems ------------------------------------------------------------------------
def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("x", "s", "sh", "ch")) else "s")


def _word_prompt(rng: random.Random, start: int, steps: Sequence[Step]) -> str:
    hero, friend = rng.sample(NAMES, 2)
    things = _plural(rng.choice(OBJECTS))
    lines = [f"{hero} has {start} {things}."]
    for s in steps:
        if s.op == "+":
            lines.append(rng.choice([f"{friend} gives {hero} {s.right} more.", f"{hero} finds {s.right} more."]))
        else:
            lines.append(rng.choice([f"{hero} gives {s.right} to {friend}.", f"{hero} loses {s.right}."]))
    lines.append(f"How many {things} does {hero} have now?")
    return " ".join(lines)


def make_problem(rng: random.Random, n_steps: int, kind: str = "arithmetic", max_start: int = 20,
                 max_operand: int = 9) -> ReasoningProblem:
    """A chain of ``n_steps`` operations: a start in 1..``max_start``, then + or - an operand in
    1..``max_operand`` (a subtraction only where the result stays >= 0)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    if n_steps < 1:
        raise ValueError(f"n_steps={n_steps} must be >= 1")
    value = start = rng.randint(1, max_start)
    steps = []
    for _ in range(n_steps):
        right = rng.randint(1, max_operand)
        op = "-" if right <= value and rng.random() < 0.5 else "+"
        result = value + right if op == "+" else value - right
        steps.append(Step(value, op, right, result))
        value = result
    prompt = (f"What is {' '.join([str(start), *(f'{s.op} {s.right}' for s in steps)])}?" if kind == "arithmetic"
              else _word_prompt(rng, start, steps))
    return ReasoningProblem(kind, prompt, tuple(steps))


def make_problems(n: int, steps: Sequence[int] = (1, 2, 3, 4), kinds: Sequence[str] = ("arithmetic",),
                  seed: int = 0, max_start: int = 20, max_operand: int = 9) -> list[ReasoningProblem]:
    """``n`` problems cycling through the step counts and kinds (equal shares); deterministic for a seed."""
    rng = random.Random(seed)
    return [make_problem(rng, steps[i % len(steps)], kinds[(i // len(steps)) % len(kinds)], max_start, max_operand)
            for i in range(n)]


def heldout_problems(n: int, seed: int, train: Iterable[ReasoningProblem], steps: Sequence[int] = (2, 3, 4, 5),
                     kinds: Sequence[str] = ("arithmetic",), **ranges: int) -> list[ReasoningProblem]:
    """``n`` problems of another seed whose prompts never appear in ``train`` (equal shares of the step
    counts; a step count with too few unseen prompts gets fewer)."""
    seen = {p.prompt for p in train}
    per = -(-n // len(steps))
    out: list[ReasoningProblem] = []
    for j, k in enumerate(steps):
        pool = [p for p in make_problems(8 * per, (k,), kinds, seed=seed + 7919 * j, **ranges) if p.prompt not in seen]
        unique = list({p.prompt: p for p in pool}.values())
        out += unique[:per]
    return out


# ---- checking ---------------------------------------------------------------------------------
def evaluate_chain(expression: str) -> int:
    """The value of ``"a + b - c ..."``, left to right, from its tokens (no ``eval``)."""
    tokens = expression.split()
    if len(tokens) % 2 == 0 or not all(t.isdigit() for t in tokens[::2]) or not set(tokens[1::2]) <= {"+", "-"}:
        raise ValueError(f"not a chain of + and - on whole numbers: {expression!r}")
    value = int(tokens[0])
    for op, num in zip(tokens[1::2], tokens[2::2], strict=True):
        value = value + int(num) if op == "+" else value - int(num)
    return value


def check_trace(trace: str, expression: str | None = None) -> bool:
    """Every step of a trace is correct arithmetic, each step starts from the previous result, and (given the
    ``expression``) the steps are that expression's operations in order."""
    parts = trace.split()
    found = STEP.findall(trace)
    if not found or " ".join(f"{a} {op} {b} = {r}." for a, op, b, r in found) != " ".join(parts):
        return False
    prev = None
    for a, op, b, r in found:
        a, b, r = int(a), int(b), int(r)
        if (a + b if op == "+" else a - b) != r or (prev is not None and a != prev):
            return False
        prev = r
    if expression is not None:
        return " ".join([found[0][0], *(f"{op} {b}" for _, op, b, _ in found)]) == " ".join(expression.split())
    return True


# ---- files ------------------------------------------------------------------------------------
def records(problems: Sequence[ReasoningProblem], no_think_share: float = 0.0, seed: int = 0) -> list[dict]:
    """Chat records (``{"messages": [...]}``); a random ``no_think_share`` of them in the no-think variant."""
    if not 0 <= no_think_share <= 1:
        raise ValueError(f"no_think_share={no_think_share} must be in [0, 1]")
    rng = random.Random(seed)
    return [{"messages": p.messages(think=rng.random() >= no_think_share)} for p in problems]


def write_jsonl(path: str | Path, problems: Sequence[ReasoningProblem], no_think_share: float = 0.0,
                seed: int = 0) -> Path:
    """Write ``records(problems, ...)`` as JSONL for ``mmlab train sft --data PATH``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for r in records(problems, no_think_share, seed):
            f.write(json.dumps(r) + "\n")
    tmp.replace(path)
    return path


def _steps(text: str) -> tuple[int, ...]:
    lo, sep, hi = text.partition("-")
    try:
        values = tuple(range(int(lo), int(hi) + 1)) if sep else tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps {text!r}: expected a range (1-4) or a list (2,3)") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--steps {text!r}: step counts must be >= 1")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmlab.data.reasoning", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    parser.add_argument("--n", type=int, default=20_000, help="number of problems")
    parser.add_argument("--steps", type=_steps, default=(1, 2, 3, 4), help="step counts, e.g. 1-4 or 2,3")
    parser.add_argument("--kinds", default="arithmetic", help="comma-separated: arithmetic, word")
    parser.add_argument("--no-think-share", type=float, default=0.0,
                        help="share of records with an empty think block (0: all traces, 1: answers only)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    kinds = tuple(k.strip() for k in args.kinds.split(","))
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"--kinds: unknown {', '.join(sorted(unknown))}; known: {', '.join(KINDS)}")
    path = write_jsonl(args.out, make_problems(args.n, args.steps, kinds, seed=args.seed), args.no_think_share,
                       args.seed)
    print(f"wrote {args.n} problems to {path} (train on it: mmlab train sft --base BASE --data {path} --out DIR)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
