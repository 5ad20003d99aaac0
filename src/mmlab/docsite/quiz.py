"""A lesson's quiz.md, parsed once: the site turns it into an interactive page, and the tests check it.

The Markdown stays the one source. One ``###`` heading per question::

    ### Q1. What does RMSNorm compute?
    - [ ] A. a wrong option
    - [x] B. the right option
    > **Explanation:** why B (a blockquote or a plain paragraph)

    ### O1. An open question?
    > **Reference answer:** what a good answer says

Everything else (the title, the intro, ``##`` headings) is kept as it is. ``render_quiz`` writes the
page as Markdown with HTML wrappers (``md_in_html``), so options, code and math render like any page;
``assets/quiz.js`` makes the options clickable and keeps the score in the browser's local storage.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from mmlab.errors import MMLabError

HEADING = re.compile(r"^#{1,6} ")
FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
OPTION = re.compile(r"^- \[([ xX])\] (.*)$")
REFERENCE = re.compile(r"^(?:> ?)?\*\*Reference answer:\*\*\s*")


@dataclass
class Choice:
    """A multiple-choice question: exactly one option is right."""

    heading: str  # the "### ..." line
    line: int  # where the heading is in quiz.md (1-based), for errors
    body: str  # Markdown between the heading and the options
    options: list[str]  # each option's Markdown, without "- [ ] "
    answer: int  # index of the right option
    explanation: str  # Markdown after the options, blockquote markers removed

    @property
    def qid(self) -> str:
        """A stable id for the browser's storage: a stored answer is dropped when the question changes."""
        digest = hashlib.sha1("\n".join([self.heading, *self.options]).encode()).hexdigest()[:8]
        return f"q{self.line}-{digest}"


@dataclass
class OpenQuestion:
    heading: str
    line: int
    body: str
    answer: str  # the reference answer's Markdown, without its label


@dataclass
class Quiz:
    parts: list[str | Choice | OpenQuestion]  # in page order; str is Markdown kept as it is

    @property
    def choices(self) -> list[Choice]:
        return [p for p in self.parts if isinstance(p, Choice)]

    @property
    def open_questions(self) -> list[OpenQuestion]:
        return [p for p in self.parts if isinstance(p, OpenQuestion)]


def _sections(lines: list[str]) -> list[tuple[int, list[str]]]:
    """Split at headings outside code fences: (first line number, lines)."""
    sections: list[tuple[int, list[str]]] = [(1, [])]
    fence = None
    for n, line in enumerate(lines, 1):
        m = FENCE.match(line)
        if m and (fence is None or m[1].startswith(fence)):
            fence = m[1][0] * len(m[1]) if fence is None else None
        elif fence is None and HEADING.match(line):
            sections.append((n, []))
        sections[-1][1].append(line)
    return [s for s in sections if s[1]]


def _unquote(lines: list[str]) -> str:
    return "\n".join(re.sub(r"^> ?", "", line) for line in lines).strip()


def _question(start: int, lines: list[str], source: str) -> Choice | OpenQuestion | None:
    heading, rest = lines[0], lines[1:]
    where = f"{source}:{start}"
    first = next((i for i, line in enumerate(rest) if OPTION.match(line)), None)
    if first is not None:
        options, marks, i = [], [], first
        while i < len(rest) and (m := OPTION.match(rest[i])):
            text = [m[2]]
            i += 1
            while i < len(rest) and rest[i].startswith("  ") and rest[i].strip():  # an option's next lines
                text.append(rest[i].strip())
                i += 1
            options.append(" ".join(text))
            marks.append(m[1] != " ")
        if sum(marks) != 1:
            raise MMLabError(f"{where}: {heading.strip()!r} has {sum(marks)} options marked [x]; mark exactly one")
        if len(options) < 2:
            raise MMLabError(f"{where}: {heading.strip()!r} needs at least two options")
        if any(OPTION.match(line) for line in rest[i:]):
            raise MMLabError(f"{where}: {heading.strip()!r}: its options must be one list, without text between them")
        return Choice(heading, start, "\n".join(rest[:first]).strip(), options, marks.index(True), _unquote(rest[i:]))
    ref = next((i for i, line in enumerate(rest) if REFERENCE.match(line)), None)
    if ref is not None:
        answer = [REFERENCE.sub("", rest[ref]), *rest[ref + 1:]]
        return OpenQuestion(heading, start, "\n".join(rest[:ref]).strip(), _unquote(answer))
    return None


def parse_quiz(text: str, source: str | Path = "quiz.md") -> Quiz:
    """Parse quiz.md; a question whose options do not mark exactly one answer is an error naming its line."""
    parts: list[str | Choice | OpenQuestion] = []
    for start, lines in _sections(text.splitlines()):
        question = _question(start, lines, str(source)) if lines[0].startswith("### ") else None
        parts.append(question or "\n".join(lines).strip())
    return Quiz(parts)


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def _wrap(tag: str, attrs: str, *blocks: str) -> str:
    """An HTML element whose content MkDocs still reads as Markdown (``md_in_html``)."""
    inner = "\n\n".join(b for b in blocks if b)
    return f"<{tag} {attrs} markdown=\"1\">\n\n{inner}\n\n</{tag}>"


def render_quiz(quiz: Quiz, quiz_id: str) -> str:
    """The interactive page, as Markdown inside HTML wrappers; the score box comes before the first question."""
    n = len(quiz.choices)
    out, scored = [], False
    for part in quiz.parts:
        if isinstance(part, str):
            out.append(part)
            continue
        if not scored and n:
            out.append(f'<div class="mmlab-score" data-quiz="{_attr(quiz_id)}" data-total="{n}">'
                       f'<span class="mmlab-score-text">{n} questions to answer</span></div>')
            scored = True
        if isinstance(part, Choice):
            options = _wrap("div", 'class="mmlab-options"', "\n".join(f"- {o}" for o in part.options))
            explanation = _wrap("div", 'class="mmlab-explanation"', part.explanation)
            out.append(_wrap("div", f'class="mmlab-q" data-qid="{part.qid}" data-answer="{part.answer}"',
                             part.heading, part.body, options, explanation))
        else:
            reveal = _wrap("details", 'class="mmlab-reveal tip"',
                           "<summary>Reveal the reference answer</summary>", part.answer)
            out.append(_wrap("div", 'class="mmlab-open"', part.heading, part.body, reveal))
    return "\n\n".join(p for p in out if p) + "\n"
