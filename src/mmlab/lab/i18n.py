"""The Chinese edition's result blocks: the same numbers as the English pages, words from a catalog.

A lesson's Chinese files sit beside the English ones (``teaching.zh.md`` next to ``teaching.md``) and hold
the same ``<!-- mmlab:result ... -->`` blocks. ``mmlab lab render`` renders a block of a ``.zh.md`` file from
the same results JSON, translating every piece of text in it -- a finding's claim, a table's headers,
caption and text cells -- through the lesson's catalog, ``i18n/zh.json`` in the lesson folder:

    {"strings": {"With the tool, accuracy barely depends on difficulty (best and worst level within {0})":
                 "用了工具之后，准确率几乎与难度无关（最好与最差的难度级别相差不超过 {0}）"}}

Numbers never enter a catalog: a catalog key is the English text with each number replaced by ``{0}``,
``{1}``, ... in order (``template``), and rendering puts the JSON's numbers back into the translation, in
any order its placeholders ask for. So a re-run experiment re-renders both languages, and a string the
catalog lacks is an error that names it and the catalog file (``mmlab lab i18n-missing`` lists them all).
The fixed words of a block (the findings table's header, yes/no, the provenance line) are in ``PHRASES``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mmlab.errors import MMLabError

LANGS = ("zh",)
# a number in running text: 3, -0.25, 1,024, 3e-05 (in "1.5x" or "8-bit" the number is 1.5 or 8); not the
# digits of a name such as exp1 or fp32
NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d+)?")
PLACEHOLDER = re.compile(r"\{(\d+)\}")

PHRASES = {
    "zh": {
        "finding": "结论",
        "measured": "测量值",
        "holds?": "是否成立",
        "yes": "是",
        "no": "否",
        "provenance": "*由 `{experiment}`{mode} 测得；结果：`results/{file}`。*",
        "mode": "（{mode} 模式）",
        "prompt": "提示词",
        "seed": "随机种子",
        "temperature": "温度",
    },
}


def lang_of(path: Path) -> str:
    """``teaching.zh.md`` -> "zh"; an English file -> "en"."""
    parts = path.name.split(".")
    return parts[-2] if len(parts) >= 3 and parts[-1] == "md" and parts[-2] in LANGS else "en"


def english_twin(path: Path) -> Path:
    """``teaching.zh.md`` -> ``teaching.md`` (the file it translates)."""
    lang = lang_of(path)
    return path if lang == "en" else path.with_name(path.name[: -len(f".{lang}.md")] + ".md")


def template(text: str) -> tuple[str, list[str]]:
    """English text -> (its catalog key, the numbers taken out of it, in order)."""
    numbers: list[str] = []

    def take(m: re.Match) -> str:
        numbers.append(m.group(0))
        return "{" + str(len(numbers) - 1) + "}"

    return NUMBER.sub(take, text.replace("{", "{{").replace("}", "}}")), numbers


class Catalog:
    """One lesson's translations into ``lang`` (its ``i18n/<lang>.json``); ``missing`` collects the keys
    asked for and not found, so one render can report all of them."""

    def __init__(self, lesson: Path, lang: str):
        self.lang, self.path = lang, lesson / "i18n" / f"{lang}.json"
        self.strings: dict[str, str] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise MMLabError(f"{self.path}:{e.lineno}: invalid JSON ({e.msg})") from None
            strings = data.get("strings", {}) if isinstance(data, dict) else None
            if not isinstance(strings, dict) or not all(isinstance(v, str) for v in strings.values()):
                raise MMLabError(f"{self.path}: expected {{\"strings\": {{english template: translation}}}}")
            self.strings = strings
        self.missing: list[str] = []
        self.used: set[str] = set()

    def phrase(self, key: str) -> str:
        return PHRASES[self.lang][key]

    def __call__(self, text: str) -> str:
        """``text`` translated, with its own numbers; the English text (and a note in ``missing``) if absent."""
        key, numbers = template(text)
        if not re.search(r"[A-Za-z]", PLACEHOLDER.sub("", key)):  # only numbers and signs: nothing to translate
            return text
        if key not in self.strings:
            self.missing.append(key)
            return text
        self.used.add(key)
        translated = self.strings[key]
        wanted = {int(i) for i in PLACEHOLDER.findall(translated)}
        if wanted != set(range(len(numbers))):
            raise MMLabError(f"{self.path}: the translation of {key!r} must use the placeholders "
                             f"{', '.join(f'{{{i}}}' for i in range(len(numbers))) or '(none)'} once each")
        return PLACEHOLDER.sub(lambda m: numbers[int(m.group(1))], translated).replace("{{", "{").replace("}}", "}")


def cell(value: Any, catalog: Catalog | None, fmt) -> str:
    """A table cell: numbers as ``fmt`` writes them; text through the catalog."""
    if catalog is not None and isinstance(value, str):
        return fmt(catalog(value))
    if catalog is not None and isinstance(value, bool):
        return catalog.phrase("yes" if value else "no")
    return fmt(value)


# ---- is a translation the same page? ---------------------------------------------------------------------
LESSON_DOCS = ("README.md", "teaching.md", "code_guide.md", "quiz.md")
FIGURE = re.compile(r"results/[\w.-]+\.png")
OPEN_BLOCK = re.compile(r"<!-- mmlab:result [^>]*-->")
WHOLE_BLOCK = re.compile(r"<!-- mmlab:result [^>]*-->.*?<!-- /mmlab:result -->", re.S)
FENCE_LINE = re.compile(r"^\s*(`{3,}|~{3,})")


LINK = re.compile(r"\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """``text`` without its fenced code blocks (a link-like string in code is code)."""
    out, in_code = [], False
    for line in text.splitlines():
        if FENCE_LINE.match(line):
            in_code = not in_code
        elif not in_code:
            out.append(line)
    return "\n".join(out)


def _outline(text: str) -> dict[str, Any]:
    """What a translation must keep: heading levels in order, figures, result blocks, code blocks."""
    levels, fences, in_code = [], 0, False
    for line in text.splitlines():
        if FENCE_LINE.match(line):
            in_code, fences = not in_code, fences + (not in_code)
        elif not in_code and (m := re.match(r"^(#{1,6}) ", line)):
            levels.append(len(m.group(1)))
    return {"headings (levels in order)": levels, "figures": sorted(set(FIGURE.findall(text))),
            "result blocks (in order)": OPEN_BLOCK.findall(text), "code blocks": fences}


def typed_numbers(text: str) -> set[str]:
    """The numbers written in a page's prose: outside code blocks and rendered result blocks."""
    return {n.replace(",", "") for n in NUMBER.findall(WHOLE_BLOCK.sub("", _prose(text)))}


def compare(english: Path, translated: Path) -> list[str]:
    """Where ``translated`` does not correspond to ``english``: each problem a line naming the file."""
    en, tr = english.read_text(encoding="utf-8"), translated.read_text(encoding="utf-8")
    problems = [f"{translated}: {what} differ from {english.name}'s: {b!r} vs {a!r}"
                for what, a in _outline(en).items() if (b := _outline(tr)[what]) != a]
    if extra := sorted(typed_numbers(tr) - typed_numbers(en)):  # a figure copied by hand and gone stale
        problems.append(f"{translated}: numbers {extra} are not in {english.name} (a translation states the English "
                        "page's numbers, and its measured ones come from result blocks)")
    for target in LINK.findall(_prose(tr)):
        path = target.split("#", 1)[0]
        if path and not re.match(r"^[a-z]+:", path) and not (translated.parent / path).exists():
            problems.append(f"{translated}: links to {target!r}, which does not exist")
    if english.name == "quiz.md":
        from mmlab.docsite.quiz import parse_quiz

        qe, qt = parse_quiz(en, english), parse_quiz(tr, translated)
        if [c.answer for c in qe.choices] != [c.answer for c in qt.choices]:
            problems.append(f"{translated}: its questions' correct options {[c.answer for c in qt.choices]} are not "
                            f"{english.name}'s {[c.answer for c in qe.choices]} (same questions, same keys)")
        if [len(c.options) for c in qe.choices] != [len(c.options) for c in qt.choices]:
            problems.append(f"{translated}: options per question differ from {english.name}'s")
        if len(qe.open_questions) != len(qt.open_questions):
            problems.append(f"{translated}: {len(qt.open_questions)} open questions, {english.name} has "
                            f"{len(qe.open_questions)}")
    return problems


def expected_translations(root: Path, lang: str = "zh") -> list[tuple[Path, Path]]:
    """(English file, its translation) for the project's README and ROADMAP, the lessons' index and every lesson's
    four docs (DEVELOPERS.md, for contributors, stays English)."""
    tops = ("README.md", "ROADMAP.md", "modules/README.md")
    pairs = [(root / n, root / n.replace(".md", f".{lang}.md")) for n in tops
             if n != "modules/README.md" or (root / n).is_file()]
    lessons = sorted({p.parent for p in (root / "modules").glob("*/*/README.md")})
    for lesson in lessons:
        pairs += [(lesson / d, lesson / d.replace(".md", f".{lang}.md")) for d in LESSON_DOCS if (lesson / d).is_file()]
    return pairs


def check_translations(root: Path, lang: str = "zh") -> dict[str, list[str]]:
    """The edition's state: ``missing`` translations, and ``problems`` of those that exist (outline, quiz keys,
    result blocks that are out of date or lack catalog strings)."""
    from mmlab.lab.render import render_text

    missing, problems = [], []
    for en, tr in expected_translations(root, lang):
        if not tr.is_file():
            missing.append(str(tr.relative_to(root)))
            continue
        problems += compare(en, tr)
        text = tr.read_text(encoding="utf-8")
        try:
            if render_text(text, tr, root / "modules") != text:
                problems.append(f"{tr}: result blocks out of date (run `mmlab lab render`)")
        except MMLabError as e:
            problems.append(str(e))
    return {"missing": missing, "problems": problems}
