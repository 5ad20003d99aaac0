"""The quiz linter: it passes on the tutorial's quizzes and catches each way a question can give its answer away."""

import json
from pathlib import Path

import pytest

from mmlab.cli import main as cli
from mmlab.docsite.quizlint import backed, lint

ROOT = Path(__file__).resolve().parents[1]


def test_every_quiz_passes_the_linter():
    report = lint(ROOT / "modules")
    assert not report.problems, "\n".join(report.problems[:40])
    figures = report.figures()
    assert figures["questions"] >= 140 and figures["key_longest_rate"] <= 0.30
    assert all(0.15 <= r <= 0.35 for r in figures["key_position_rates"].values())
    assert all(r <= 0.45 for r in figures["form_strategy_rates"].values()), figures["form_strategy_rates"]


def question(n: int, key: int, options: list[str], notes: bool = True, explanation: str = "Because it is.") -> str:
    lines = [f"### Q{n}. Question {n}?"]
    for i, option in enumerate(options):
        lines.append(f"- [{'x' if i == key else ' '}] {'ABCD'[i]}. {option}")
        if notes and i != key:
            lines.append(f"  Why not: option text {i} confuses two separate ideas here.")
    return "\n".join(lines) + f"\n\n> **Explanation:** {explanation}\n"


GOOD = [  # keys at A, B, C, D; the key is never the longest
    question(1, 0, ["short key", "a much longer wrong option", "another long wrong option", "a third wrong one"]),
    question(2, 1, ["a long wrong option here", "short key", "a longer wrong option", "and a third wrong one"],
             explanation="`exp1_demo` measured it."),
    question(3, 2, ["a long wrong option here", "another wrong option", "short key", "and a third wrong one"],
             explanation="`RMSNorm` does it."),
    question(4, 3, ["a long wrong option here", "another wrong option", "a third wrong option", "short key"]),
]
OPEN = "### O1. Why?\n\n> **Model answer:** because.\n\n### O2. How?\n\n> **Model answer:** like this.\n"


def lesson(tmp_path: Path, questions: list[str], results: dict | None = None) -> Path:
    folder = tmp_path / "modules" / "01-tier" / "01-lesson"
    (folder / "experiments").mkdir(parents=True)
    (folder / "results").mkdir()
    (folder / "experiments" / "exp1_demo.py").write_text("STEPS = 300\n")
    (folder / "results" / "exp1_demo.json").write_text(json.dumps(results or {"metrics": {"ratio": 1.134}}))
    (folder / "quiz.md").write_text("# Quiz\n\n" + "\n".join(questions) + "\n" + OPEN)
    return tmp_path / "modules"


def problems(tmp_path: Path, questions: list[str], **kw) -> list[str]:
    return lint(lesson(tmp_path, questions, **kw), src=ROOT / "src" / "mmlab").problems


def test_a_fair_quiz_has_no_problems(tmp_path):
    assert problems(tmp_path, GOOD) == []


@pytest.mark.parametrize("change, message", [
    # the key is the longest everywhere, and always B
    (lambda q: [question(i, 1, ["wrong one", "the right option, by far the longest of all", "wrong two", "wrong 3"])
                for i in range(1, 5)], "the right option is the longest in 4 of 4"),
    (lambda q: [question(i, 1, ["a long wrong option", "key", "another wrong one", "third wrong one"])
                for i in range(1, 5)], "the right option is B in 4 of 4"),
    (lambda q: q[:3] + [question(4, 3, ["a long wrong option", "b wrong one", "c wrong one", "All of the above"])],
     "catch-all"),
    (lambda q: q[:3] + [question(4, 3, ["same words", "Same words", "c wrong one", "short key"])], "two options alike"),
    (lambda q: q[:3] + [question(4, 3, ["a long wrong option", "b wrong one", "c wrong one", "key"], notes=False)],
     "needs an indented 'Why not:' note"),
    (lambda q: q[:3] + [question(4, 3, ["a long wrong option", "b wrong one", "c wrong one", "key"],
                                 explanation="Option B is tempting.")], "names an option by its letter"),
    (lambda q: q[:3] + [question(4, 3, ["a long wrong option", "b wrong one", "c wrong one", "key"],
                                 explanation="The cache was 1.2x slower.")], "quotes '1.2x'"),
    (lambda q: q[:3] + [question(4, 3, ["a long wrong option", "b wrong one", "c wrong one", "about 42%"])],
     "quotes '42%'"),
    (lambda q: [q[0], q[3]] + [question(5, 1, ["a long wrong option", "k", "c wrong one", "d wrong one"]),
                               question(6, 2, ["a long wrong option", "b wrong one", "k", "d wrong one"])],
     "questions need the lesson's results or code"),
    (lambda q: [q[0].replace("- [ ] B.", "- [ ] C."), *q[1:]], "letters its options"),
])
def test_each_giveaway_is_caught(tmp_path, change, message):
    found = problems(tmp_path, change(GOOD))
    assert any(message in p for p in found), found


def test_a_measured_number_is_allowed_at_the_precision_written(tmp_path):
    quoted = GOOD[:3] + [question(4, 3, ["a long wrong option", "b wrong one", "c wrong one", "key"],
                                  explanation="The cache was 1.13x slower; 300 steps; `0.5 * x` in code.")]
    assert problems(tmp_path, quoted) == []
    assert backed("1.13", {1.134}, False) and not backed("1.14", {1.134}, False)
    assert backed("23", {0.2304}, True) and not backed("25", {0.2304}, True)


def test_the_command_prints_figures_and_fails_on_a_problem(tmp_path, capsys):
    modules = lesson(tmp_path, GOOD[:3] + [question(4, 3, ["x", "y", "z", "the key"], notes=False)])
    assert cli(["lab", "lint-quizzes", str(modules / "01-tier" / "01-lesson")]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["figures"]["questions"] == 4 and out["figures"]["key_positions"] == {"A": 1, "B": 1, "C": 1, "D": 1}
    assert any("Why not" in p for p in out["problems"])
    assert out["figures"]["form_strategy_rates"]["longest"] == 0.25  # the key is the longest in one of four
    assert cli(["lab", "lint-quizzes", str(tmp_path / "nowhere")]) == 1
    assert "nowhere: not a lesson folder (it has no quiz.md)" in capsys.readouterr().err
