"""A lesson's quiz.md, parsed once: the site turns it into an interactive page, and the tests check it.

The Markdown stays the one source. One ``###`` heading per question::

    ### Q1. What does RMSNorm compute?
    - [ ] A. a wrong option
      Why not: the misconception behind it, and what is wrong with it
    - [x] B. the right option
    > **Explanation:** why the right option is right (a blockquote or a plain paragraph)

    ### O1. An open question?
    > **Model answer:** what a strong candidate would say (``**Reference answer:**`` is read the same)

An option's indented ``Why not:`` line (and the indented lines after it) is that option's note: the site
shows it to a learner who chose the option. The site shuffles the options, so the letters written in the
file are for reading it on GitHub; explanations and notes name options by what they say, never by letter
(``mmlab.docsite.quizlint`` checks that, and the rest of what makes a question fair).

A ``###`` section that almost follows this (an option written ``* [x]``, ``-[x]`` or indented; a label
written ``**explanation**:`` or ``Reference answer:``; a choice without its explanation) is an error
naming the file and line, never a question silently dropped. Everything else (the title, the intro,
``##`` headings) is kept as it is. ``render_quiz`` writes the
page as Markdown with HTML wrappers (``md_in_html``), so options, code and math render like any page;
``assets/quiz.js`` makes the options clickable and keeps the score in the browser's local storage.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from mmlab.errors import MMLabError

HEADING = re.compile(r"^#{1,6} ")
FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
OPTION = re.compile(r"^- \[([ xX])\] (.*)$")
# the Chinese edition's quiz.zh.md writes the same labels in Chinese: **解析：**, **参考答案：**, 为什么不对：
LABEL = re.compile(r"^(?:> ?)?\*\*(Explanation|Reference answer|Model answer|解析|参考答案)[:：]\*\*")
REFERENCE = re.compile(r"^(?:> ?)?\*\*(?:(?:Reference|Model) answer|参考答案)[:：]\*\*\s*")
WHY_NOT = re.compile(r"^\s+(?:Why not:|为什么不对[:：])\s*")
EXPLANATION = re.compile(r"^\*\*(?:Explanation|解析)[:：]\*\*")
LABEL_KIND = {"解析": "Explanation", "参考答案": "Model answer"}
LETTER = re.compile(r"^([A-Z])\.\s+")  # the letter an option is written with in the file
# what a writer may have meant as an option or a label: checked against the exact forms above
LOOSE_OPTION = re.compile(r"^\s*(?:[-*+]\s*)?\[[ xX]\]")
LOOSE_LABEL = re.compile(r"^\s*(?:>\s*)*[*_]*\s*(explanation|reference\s+answer|model\s+answer)\s*[*_]*\s*:", re.I)


@dataclass
class Choice:
    """A multiple-choice question: exactly one option is right."""

    heading: str  # the "### ..." line
    line: int  # where the heading is in quiz.md (1-based), for errors
    body: str  # Markdown between the heading and the options
    options: list[str]  # each option's Markdown, without "- [ ] " (its letter, "A. ", included)
    answer: int  # index of the right option
    explanation: str  # Markdown after the options, blockquote markers removed
    notes: list[str] = field(default_factory=list)  # per option: its "Why not:" note ("" where it has none)
    # the browser stores answers under it: a hash of the heading and the options as written (not where they
    # are in the file), so a stored answer is dropped exactly when the question changes; parse_quiz adds
    # "-2", "-3" to exact duplicates
    qid: str = ""


@dataclass
class OpenQuestion:
    heading: str
    line: int
    body: str
    answer: str  # the model answer's Markdown, without its label


@dataclass
class Quiz:
    parts: list[str | Choice | OpenQuestion]  # in page order; str is Markdown kept as it is

    @property
    def choices(self) -> list[Choice]:
        return [p for p in self.parts if isinstance(p, Choice)]

    @property
    def open_questions(self) -> list[OpenQuestion]:
        return [p for p in self.parts if isinstance(p, OpenQuestion)]


def _in_code(lines: list[str]) -> list[bool]:
    """For each line, whether it belongs to a fenced code block (its fences included)."""
    flags, fence = [], None
    for line in lines:
        m = FENCE.match(line)
        flags.append(fence is not None or m is not None)
        if m and (fence is None or m[1].startswith(fence)):
            fence = m[1][0] * len(m[1]) if fence is None else None
    return flags


def _sections(lines: list[str]) -> list[tuple[int, list[str]]]:
    """Split at headings outside code fences: (first line number, lines)."""
    sections: list[tuple[int, list[str]]] = [(1, [])]
    for n, (line, code) in enumerate(zip(lines, _in_code(lines), strict=True), 1):
        if not code and HEADING.match(line):
            sections.append((n, []))
        sections[-1][1].append(line)
    return [s for s in sections if s[1]]


def _unquote(lines: list[str]) -> str:
    return "\n".join(re.sub(r"^> ?", "", line) for line in lines).strip()


def _question(start: int, lines: list[str], source: str) -> Choice | OpenQuestion | None:
    heading, rest = lines[0], lines[1:]
    title = heading.strip()

    def error(i: int | None, problem: str) -> MMLabError:  # i: a line of ``rest``, None for the heading
        return MMLabError(f"{source}:{start if i is None else start + 1 + i}: {title!r} {problem}")

    text = [(i, line) for i, (line, code) in enumerate(zip(rest, _in_code(rest), strict=True)) if not code]
    for i, line in text:
        if LOOSE_OPTION.match(line) and not OPTION.match(line):
            raise error(i, f"has {line.strip()!r}: write an option as `- [ ] text` or `- [x] text`, unindented")
        if LOOSE_LABEL.match(line) and not LABEL.match(line):
            raise error(i, f"has {line.strip()!r}: write the label exactly `**Explanation:**` or "
                           "`**Model answer:**` (optionally after `> `)")
    labels = {i: LABEL_KIND.get(LABEL.match(line)[1], LABEL.match(line)[1]) for i, line in text if LABEL.match(line)}
    first = next((i for i, line in text if OPTION.match(line)), None)
    if first is not None:
        options, notes, marks, i = [], [], [], first
        while i < len(rest) and (m := OPTION.match(rest[i])):
            words, note = [m[2]], None
            i += 1
            while i < len(rest) and rest[i].startswith("  ") and rest[i].strip():  # an option's next lines
                if note is None and WHY_NOT.match(rest[i]):
                    note = [WHY_NOT.sub("", rest[i])]
                else:
                    (words if note is None else note).append(rest[i].strip())
                i += 1
            options.append(" ".join(words))
            notes.append(" ".join(note or []))
            marks.append(m[1] != " ")
        if sum(marks) != 1:
            raise error(None, f"has {sum(marks)} options marked [x]; mark exactly one")
        if len(options) < 2:
            raise error(None, "needs at least two options")
        if (later := next((j for j, line in text if j >= i and OPTION.match(line)), None)) is not None:
            raise error(later, "has text between its options: they must be one list")
        misplaced = (j for j, label in labels.items() if j < first or label != "Explanation")
        if (wrong := next(misplaced, None)) is not None:
            raise error(wrong, "has a label out of place: a multiple-choice question takes an "
                               "`**Explanation:**` after its options")
        explanation = _unquote(rest[i:])
        if not EXPLANATION.match(explanation):
            raise error(None, "needs an explanation right after its options, starting `**Explanation:**`")
        digest = hashlib.sha1("\n".join([title, *rest[first:i]]).encode()).hexdigest()[:10]
        return Choice(heading, start, "\n".join(rest[:first]).strip(), options, marks.index(True), explanation,
                      qid=f"q{digest}", notes=notes)
    if (wrong := next((j for j, label in labels.items() if label == "Explanation"), None)) is not None:
        raise error(wrong, "has an `**Explanation:**` but no options (`- [ ] ...`, `- [x] ...`); an open "
                           "question takes a `**Model answer:**`")
    if labels:
        ref = min(labels)
        answer = [REFERENCE.sub("", rest[ref]), *rest[ref + 1:]]
        return OpenQuestion(heading, start, "\n".join(rest[:ref]).strip(), _unquote(answer))
    return None


def parse_quiz(text: str, source: str | Path = "quiz.md") -> Quiz:
    """Parse quiz.md. A malformed question (not exactly one right option, an option or a label that is
    almost right, a choice without its explanation) is an error naming the file and line."""
    parts: list[str | Choice | OpenQuestion] = []
    seen: dict[str, int] = {}
    for start, lines in _sections(text.splitlines()):
        question = _question(start, lines, str(source)) if lines[0].startswith("### ") else None
        if isinstance(question, Choice):
            seen[question.qid] = n = seen.get(question.qid, 0) + 1
            question.qid += f"-{n}" if n > 1 else ""
        parts.append(question or "\n".join(lines).strip())
    return Quiz(parts)


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def _wrap(tag: str, attrs: str, *blocks: str) -> str:
    """An HTML element whose content MkDocs still reads as Markdown (``md_in_html``)."""
    inner = "\n\n".join(b for b in blocks if b)
    return f"<{tag} {attrs} markdown=\"1\">\n\n{inner}\n\n</{tag}>"


UI = {"en": {"to answer": "{n} questions to answer", "why not": "**Why not:**", "reveal": "Reveal a model answer"},
      "zh": {"to answer": "共 {n} 道题，尚未作答", "why not": "**为什么不对：**", "reveal": "查看参考答案"}}


def render_quiz(quiz: Quiz, quiz_id: str, lang: str = "en") -> str:
    """The interactive page, as Markdown inside HTML wrappers; the score box comes before the first question.

    Each option is written without its letter (a ``mmlab-letter`` span holds it, so ``quiz.js`` can re-letter
    the options after shuffling them) and with its index in the file (``data-option``); each wrong option's
    ``Why not:`` note sits in the explanation, hidden until a learner picks that option. ``lang`` picks the
    page's own words (``UI``; quiz.js reads the page's ``lang`` for its buttons and feedback)."""
    if lang not in UI:
        raise MMLabError(f"no quiz words for language {lang!r}; known: {', '.join(UI)}")
    ui = UI[lang]
    if lang != "en":
        quiz_id += f"@{lang}"  # its own record: a translation's questions are other questions
    n = len(quiz.choices)
    out, scored = [], False
    for part in quiz.parts:
        if isinstance(part, str):
            out.append(part)
            continue
        if not scored and n:
            out.append(f'<div class="mmlab-score" data-quiz="{_attr(quiz_id)}" data-total="{n}">'
                       f'<span class="mmlab-score-text">{ui["to answer"].format(n=n)}</span></div>')
            scored = True
        if isinstance(part, Choice):
            items = [f'- <span class="mmlab-letter">{chr(65 + i)}.</span> {LETTER.sub("", o)}'
                     for i, o in enumerate(part.options)]
            options = _wrap("div", 'class="mmlab-options"', "\n".join(items))
            notes = [_wrap("div", f'class="mmlab-note" data-option="{i}"', f"{ui['why not']} {note}")
                     for i, note in enumerate(part.notes) if note and i != part.answer]
            explanation = _wrap("div", 'class="mmlab-explanation"', *notes, part.explanation)
            out.append(_wrap("div", f'class="mmlab-q" data-qid="{part.qid}" data-answer="{part.answer}"',
                             part.heading, part.body, options, explanation))
        else:
            reveal = _wrap("details", 'class="mmlab-reveal tip"',
                           f"<summary>{ui['reveal']}</summary>", part.answer)
            out.append(_wrap("div", 'class="mmlab-open"', part.heading, part.body, reveal))
    return "\n\n".join(p for p in out if p) + "\n"
