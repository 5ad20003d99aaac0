"""The quiz linter: a multiple-choice question must be answerable only by knowing the lesson.

A quiz whose right option is usually the longest, or always in the same place, can be passed without
reading a lesson. ``lint`` parses every ``modules/*/*/quiz.md`` with the site's own parser and checks:

per question
  - four options, lettered A-D in order, exactly one right (the parser refuses more or fewer marks);
  - no "all of the above" / "none of the above" / "both A and B" options, no two options alike;
  - every wrong option has a ``Why not:`` note naming its error (the site shows it to a learner who
    chose it), and no explanation or note names an option by its letter (the site shuffles them);
  - a decimal number, a percentage or a ratio written outside code and result blocks must be one the
    lesson measured or configured: it has to match, at the precision written, a number in the lesson's
    ``results/*.json`` or a literal in its ``experiments/`` scripts, so a typed number cannot drift;

per lesson
  - the right option is the strictly longest in at most half of the questions;
  - the right option's position is spread: every letter used once there are four questions, none more
    than ``ceil(n / 4) + 1`` times;
  - at least two questions need the lesson's own evidence: they embed a result block, or name one of
    its experiments (``exp2``, ``exp2_norm_comparison``) or an ``mmlab`` function or class in backticks
    that exists in ``src/mmlab``;
  - at least two open questions, each with a model answer of at most 180 words;

over the whole tutorial
  - the right option is the strictly longest in at most 30% of the questions;
  - each position A-D holds the right option in 15-35% of the questions;
  - no form-only strategy (``FORM_STRATEGIES``: the longest, the shortest, the median length, the
    option sharing most words with the question or with the other options, ...) picks the right
    option in more than 45% of the questions (chance is 25%; checked from 40 questions up). The figures
    report each strategy's score.

``mmlab lab lint-quizzes [LESSON ...]`` (or ``python -m mmlab.docsite.quizlint``) prints the figures and the problems
as JSON and exits 1 when there is a problem; ``tests/test_lab.py`` runs it.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmlab.docsite.quiz import LETTER, Choice, parse_quiz

OVERALL_LONGEST_MAX = 0.30
LESSON_LONGEST_MAX = 0.50
POSITION_RANGE = (0.15, 0.35)
EVIDENCE_MIN = 2
OPEN_MIN = 2
WHY_NOT_MIN_WORDS = 5
MODEL_ANSWER_MAX_WORDS = 180  # an interview answer: short and precise
LETTERS = "ABCD"

CATCH_ALL = re.compile(r"\b(all|none|both|neither) of (the )?(above|these|them)\b|\bboth [A-D] and [A-D]\b"
                       r"|^\s*(both|neither)\s*$", re.I)
# "option B", "options A and C", "(B)", "B is wrong", "answer C": a letter the shuffled page would not show
LETTER_REF = re.compile(r"\b[Oo]ptions? [A-D]\b|\([A-D]\)|\b[A-D] (is|was|would|says|confuses|describes)\b"
                        r"|\b[Aa]nswer [A-D]\b")
RESULT_BLOCK = re.compile(r"<!-- mmlab:result .*?<!-- /mmlab:result -->", re.S)
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)
MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$", re.S)
# numbers a reader would take for a measurement: 1.13, 0.72, 23%, 1.2x, 0.61×
MEASURED = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*(%|x\b|×)|(?<![\w.])(\d+\.\d+)(?![\w.])")
NUMBER_IN_SOURCE = re.compile(r"(?<![\w.])\d+\.\d+(?:[eE][-+]?\d+)?|(?<![\w.])\d+(?:[eE][-+]?\d+)?")
EXPERIMENT_REF = re.compile(r"\bexp(\d+)(?:_\w+)?\b")
SYMBOL_REF = re.compile(r"`(?:mmlab\.)?([A-Za-z_][\w.]*)(?:\([^`]*\))?`")


FORM_STRATEGY_MAX = 0.45
FORM_STRATEGY_MIN_QUESTIONS = 40  # below that, a strategy's score is mostly luck


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]{4,}", text.lower()))


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


# what a test-wise learner who has not read the lesson might try: each picks an option index from the form alone
FORM_STRATEGIES = {
    "longest": lambda q, texts: _argmax([len(t) for t in texts]),
    "shortest": lambda q, texts: _argmax([-len(t) for t in texts]),
    "median length": lambda q, texts: sorted(range(len(texts)), key=lambda i: len(texts[i]))[len(texts) // 2],
    "longest of B and C": lambda q, texts: 1 if len(texts) < 3 or len(texts[1]) >= len(texts[2]) else 2,
    "most words shared with the question": lambda q, texts: _argmax(
        [len(_words(t) & _words(q.heading + " " + q.body)) for t in texts]),
    "most words shared with the other options": lambda q, texts: _argmax(
        [sum(len(_words(t) & _words(u)) for j, u in enumerate(texts) if j != i) for i, t in enumerate(texts)]),
    "most hedged": lambda q, texts: _argmax(
        [len(re.findall(r"\b(may|can|often|about|usually|depends|roughly|some)\b", t.lower())) for t in texts]),
    "fewest absolutes": lambda q, texts: _argmax(
        [-len(re.findall(r"\b(always|never|only|every|all|none|must)\b", t.lower())) for t in texts]),
}


@dataclass
class LessonReport:
    lesson: str
    questions: int = 0
    key_longest: int = 0
    positions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LETTERS, 0))
    evidence: int = 0
    open_questions: int = 0
    strategies: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FORM_STRATEGIES, 0))


@dataclass
class Report:
    lessons: list[LessonReport]
    problems: list[str]

    @property
    def questions(self) -> int:
        return sum(lesson.questions for lesson in self.lessons)

    def figures(self) -> dict[str, Any]:
        n = max(self.questions, 1)
        positions = {k: sum(lesson.positions[k] for lesson in self.lessons) for k in LETTERS}
        return {
            "questions": self.questions,
            "key_longest": sum(lesson.key_longest for lesson in self.lessons),
            "key_longest_rate": round(sum(lesson.key_longest for lesson in self.lessons) / n, 3),
            "key_positions": positions,
            "key_position_rates": {k: round(v / n, 3) for k, v in positions.items()},
            "form_strategy_rates": {k: round(sum(lesson.strategies[k] for lesson in self.lessons) / n, 3)
                                    for k in FORM_STRATEGIES},
            "lessons": {lesson.lesson: {"questions": lesson.questions, "key_longest": lesson.key_longest,
                                        "key_positions": lesson.positions, "evidence_questions": lesson.evidence,
                                        "open_questions": lesson.open_questions} for lesson in self.lessons},
            "problems": len(self.problems),
        }


def visible(markdown: str) -> str:
    """The text a learner reads: no letter, no Markdown emphasis or code ticks, spaces collapsed."""
    text = LETTER.sub("", markdown)
    text = re.sub(r"[*_`]", "", text)
    return re.sub(r"\s+", " ", text).strip()


def _numbers_in(value: Any, out: set[float]) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        if math.isfinite(value):
            out.add(float(value))
    elif isinstance(value, str):
        for m in NUMBER_IN_SOURCE.finditer(value):
            out.add(float(m[0]))
    elif isinstance(value, dict):
        for k, v in value.items():
            _numbers_in(k, out)
            _numbers_in(v, out)
    elif isinstance(value, list):
        for v in value:
            _numbers_in(v, out)


def lesson_numbers(lesson: Path) -> set[float]:
    """Every number the lesson measured (its committed results) or configured (its experiment scripts)."""
    numbers: set[float] = set()
    for path in sorted((lesson / "results").glob("*.json")):
        try:
            _numbers_in(json.loads(path.read_text()), numbers)
        except (OSError, ValueError):
            continue
    for path in sorted((lesson / "experiments").glob("*.py")):
        _numbers_in(path.read_text(), numbers)
    return numbers


def backed(written: str, numbers: set[float], percent: bool) -> bool:
    """Whether ``written`` (as in "1.13" or "23" of "23%") rounds from a number in ``numbers``."""
    value = float(written)
    decimals = len(written.split(".")[1]) if "." in written else 0
    half = 0.5 * 10 ** -decimals + 1e-12
    candidates = [value / 100, value] if percent else [value]
    for target in candidates:
        scale = 100 if percent and target is candidates[0] else 1
        if any(abs(x * scale - value) <= half for x in numbers):
            return True
    return False


def _defined_symbols(src: Path) -> set[str]:
    names: set[str] = set()
    for path in src.rglob("*.py"):
        names.update(re.findall(r"^\s*(?:def|class)\s+(\w+)", path.read_text(), re.M))
        names.update(re.findall(r"^([A-Z_][A-Z0-9_]*)\s*[:=]", path.read_text(), re.M))
    return names


def _cites_evidence(q: Choice, experiments: set[str], symbols: set[str]) -> bool:
    text = "\n".join([q.heading, q.body, *q.options, q.explanation])
    if RESULT_BLOCK.search(text):
        return True
    if any(m[1] in experiments for m in EXPERIMENT_REF.finditer(text)):
        return True
    for m in SYMBOL_REF.finditer(text):
        # a class (CamelCase) or a function with an underscore that src/mmlab defines: not a bare `x` or `norm`
        if any(p in symbols and (p[0].isupper() or "_" in p) for p in m[1].split(".")):
            return True
    return False


def lint_lesson(lesson: Path, src: Path, symbols: set[str] | None = None) -> tuple[LessonReport, list[str]]:
    quiz_path = lesson / "quiz.md"
    quiz = parse_quiz(quiz_path.read_text(encoding="utf-8"), quiz_path)
    symbols = _defined_symbols(src) if symbols is None else symbols
    experiments = {m[1] for p in (lesson / "experiments").glob("exp*.py") if (m := re.match(r"exp(\d+)", p.name))}
    numbers = lesson_numbers(lesson)
    name = f"{lesson.parent.name}/{lesson.name}"
    report = LessonReport(name, open_questions=len(quiz.open_questions))
    problems: list[str] = []
    for q in quiz.choices:
        where = f"{quiz_path}:{q.line}: {q.heading.strip()!r}"
        report.questions += 1
        if len(q.options) != 4:
            problems.append(f"{where} has {len(q.options)} options; write four (A-D)")
        letters = [m[1] if (m := LETTER.match(o)) else None for o in q.options]
        if letters != list(LETTERS[:len(q.options)]):
            problems.append(f"{where} letters its options {letters}; write them 'A. ', 'B. ', ... in order")
        texts = [visible(o) for o in q.options]
        if q.answer < len(LETTERS):
            report.positions[LETTERS[q.answer]] += 1
        key = len(texts[q.answer])
        if all(key > len(t) for i, t in enumerate(texts) if i != q.answer):
            report.key_longest += 1
        for name, strategy in FORM_STRATEGIES.items():
            report.strategies[name] += strategy(q, texts) == q.answer
        for i, t in enumerate(texts):
            if CATCH_ALL.search(t):
                problems.append(f"{where} option {LETTERS[i] if i < 4 else i} is a catch-all ({t!r}): "
                                "write a real misconception")
        lowered = [t.lower() for t in texts]
        if len(set(lowered)) != len(lowered):
            problems.append(f"{where} has two options alike")
        for i, note in enumerate(q.notes):
            if i == q.answer:
                continue
            if len(note.split()) < WHY_NOT_MIN_WORDS:
                problems.append(f"{where} option {LETTERS[i] if i < 4 else i} needs an indented 'Why not:' note "
                                f"(at least {WHY_NOT_MIN_WORDS} words) naming its error")
        for label, text in [("explanation", q.explanation), *((f"note {LETTERS[i]}", n) for i, n in
                                                              enumerate(q.notes) if i < 4)]:
            if m := LETTER_REF.search(CODE.sub("", text)):
                problems.append(f"{where} {label} names an option by its letter ({m[0]!r}); the site shuffles "
                                "the options: name it by what it says")
        prose = MATH.sub("", CODE.sub("", RESULT_BLOCK.sub("", "\n".join(
            [q.heading, q.body, *q.options, q.explanation, *q.notes]))))
        for m in MEASURED.finditer(prose):
            written, percent = (m[1], m[2] == "%") if m[1] else (m[3], False)
            if not backed(written, numbers, percent):
                problems.append(f"{where} quotes {m[0].strip()!r}, which is in none of the lesson's results/*.json "
                                "or experiment scripts: embed the result block or quote what was measured")
        if _cites_evidence(q, experiments, symbols):
            report.evidence += 1
    n = report.questions
    if n and report.key_longest > LESSON_LONGEST_MAX * n:
        problems.append(f"{quiz_path}: the right option is the longest in {report.key_longest} of {n} questions "
                        f"(at most {LESSON_LONGEST_MAX:.0%})")
    cap = math.ceil(n / 4) + 1
    for letter, count in report.positions.items():
        if count > cap:
            problems.append(f"{quiz_path}: the right option is {letter} in {count} of {n} questions (at most {cap})")
        if n >= 4 and count == 0:
            problems.append(f"{quiz_path}: the right option is never {letter}")
    if report.evidence < EVIDENCE_MIN:
        problems.append(f"{quiz_path}: {report.evidence} questions need the lesson's results or code (at least "
                        f"{EVIDENCE_MIN}: embed a result block, or name an experiment or an mmlab symbol)")
    if report.open_questions < OPEN_MIN:
        problems.append(f"{quiz_path}: {report.open_questions} open questions (at least {OPEN_MIN})")
    for o in quiz.open_questions:
        words = len(o.answer.split())
        if not words or words > MODEL_ANSWER_MAX_WORDS:
            problems.append(f"{quiz_path}:{o.line}: {o.heading.strip()!r} has a model answer of {words} words "
                            f"(write one of 1-{MODEL_ANSWER_MAX_WORDS}: short and precise, with the evidence)")
    return report, problems


def lint(modules: Path, src: Path | None = None, only: list[Path] | None = None) -> Report:
    """Lint every ``modules/*/*/quiz.md`` (or the lessons in ``only``; the whole-tutorial rules then apply to
    them alone); ``src`` is the ``mmlab`` package (for symbol references)."""
    src = src or Path(__file__).resolve().parents[1]
    symbols = _defined_symbols(src)
    lessons, problems = [], []
    quizzes = [p / "quiz.md" for p in only] if only else sorted(modules.glob("*/*/quiz.md"))
    for quiz in quizzes:
        report, found = lint_lesson(quiz.parent, src, symbols)
        lessons.append(report)
        problems += found
    report = Report(lessons, problems)
    figures = report.figures()
    n = max(report.questions, 1)
    if figures["key_longest"] > OVERALL_LONGEST_MAX * n:
        problems.append(f"{modules}: the right option is the longest in {figures['key_longest']} of {n} questions "
                        f"({figures['key_longest_rate']:.0%}; at most {OVERALL_LONGEST_MAX:.0%})")
    low, high = POSITION_RANGE
    for letter, count in figures["key_positions"].items():
        if not low * n <= count <= high * n:
            problems.append(f"{modules}: the right option is {letter} in {count} of {n} questions "
                            f"({count / n:.0%}; keep each letter within {low:.0%}-{high:.0%})")
    for name, rate in figures["form_strategy_rates"].items():
        if rate > FORM_STRATEGY_MAX and n >= FORM_STRATEGY_MIN_QUESTIONS:
            problems.append(f"{modules}: picking '{name}' option gets {rate:.0%} of the questions right without "
                            f"reading them (chance is 25%; at most {FORM_STRATEGY_MAX:.0%})")
    return report


def main(argv: list[str] | None = None) -> int:
    from mmlab.lab.registry import modules_root

    args = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    lessons = [a for a in args if (a / "quiz.md").is_file()]
    roots = [a for a in args if a not in lessons]
    report = lint(roots[0] if roots else modules_root(), only=lessons or None)
    print(json.dumps({"figures": report.figures(), "problems": report.problems}, indent=1, ensure_ascii=False))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
