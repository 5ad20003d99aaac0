"""The learning site: quiz.md -> interactive page, link rewriting, the navigation, the strict build of the
real lessons, and the built site driven in headless Chromium (home, a plot, a quiz, the score after a
reload, search, the dark theme, no console errors). Screenshots go to tests/output/site/."""

import json
import os
import socket
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from mkdocs.exceptions import PluginError

from browser import Chromium, Tab, require_chromium, wait_until
from mmlab.cli import main
from mmlab.docsite.build import MARKER, build_site, make_nav, make_server, rewrite_links, site_dir, source_pages
from mmlab.docsite.hooks import to_mathml
from mmlab.docsite.quiz import parse_quiz, render_quiz
from mmlab.errors import MMLabError

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "tests" / "output" / "site"
LESSON = "modules/01-foundation/01-normalization"

QUIZ = """# Quiz · Demo

Pick one.

### Q1. Which is `right`?
- [ ] A. this one
  Why not: it is the other one,
  as the lesson shows.
- [x] B. that one, with $x^2$
  and a second line
- [ ] C. neither

> **Explanation:** B is right.
> Because.

### 2. Unlettered?

```text
### not a heading: inside a fence
* [x] nor an option
```

- [x] yes
- [ ] no

**Explanation:** a plain paragraph works too.

## Open questions

### O1. Why?

> **Reference answer:** because
> it is.
"""


# --- quiz.md -> interactive page ---------------------------------------------------------------------

def test_quiz_parser_finds_choices_answers_explanations_and_open_questions():
    quiz = parse_quiz(QUIZ)
    first, second = quiz.choices
    assert first.heading == "### Q1. Which is `right`?" and first.answer == 1 and first.line == 5
    assert first.options == ["A. this one", "B. that one, with $x^2$ and a second line", "C. neither"]
    assert first.notes == ["it is the other one, as the lesson shows.", "", ""]  # an option's Why-not note
    assert first.explanation == "**Explanation:** B is right.\nBecause."
    assert second.answer == 0 and second.body.startswith("```text\n### not a heading")  # fences are kept whole
    assert second.explanation == "**Explanation:** a plain paragraph works too."
    [open_q] = quiz.open_questions
    assert open_q.heading == "### O1. Why?" and open_q.answer == "because\nit is."
    assert [type(p).__name__ for p in quiz.parts] == ["str", "Choice", "Choice", "str", "OpenQuestion"]
    assert first.qid != second.qid


def test_answer_ids_follow_the_question_as_written_not_its_place():
    ids = [q.qid for q in parse_quiz(QUIZ).choices]
    assert [q.qid for q in parse_quiz("# Intro\n\nA new paragraph.\n\n" + QUIZ[1:]).choices] == ids  # moved
    assert parse_quiz(QUIZ.replace("C. neither", "C. none")).choices[0].qid != ids[0]  # an option changed
    assert parse_quiz(QUIZ.replace("- [ ] A.", "- [x] A.").replace("- [x] B.", "- [ ] B.")).choices[0].qid != ids[0]
    question = "### Q. Same?\n- [x] a\n- [ ] b\n\n**Explanation:** a.\n\n"
    a, b, c = (q.qid for q in parse_quiz(question * 3).choices)  # exact duplicates: an ordinal tells them apart
    assert (b, c) == (f"{a}-2", f"{a}-3")


OK_OPTIONS = "- [x] a\n- [ ] b\n"


@pytest.mark.parametrize("section, line, message", [
    ("- [ ] a\n- [ ] b\n", 3, "has 0 options marked"),
    ("- [x] a\n- [x] b\n", 3, "has 2 options marked"),
    ("- [x] a\n\n**Explanation:** a.\n", 3, "at least two options"),
    ("- [x] a\n- [ ] b\n\ntext\n\n- [ ] c\n", 9, "has text between its options: they must be one list"),
    # options almost written right
    ("* [x] a\n- [ ] b\n", 4, r"has '\* \[x\] a': write an option as `- \[ \] text`"),
    ("- [ ] a\n-[x] b\n", 5, r"has '-\[x\] b'"),
    ("- [ ] a\n  - [x] b\n", 5, r"has '- \[x\] b'.*unindented"),
    ("[x] a\n[ ] b\n\n**Explanation:** a.\n", 4, r"has '\[x\] a'"),
    # labels almost written right
    (f"{OK_OPTIONS}\n**explanation:** a.\n", 7, r"has '\*\*explanation:\*\* a.': write the label exactly"),
    (f"{OK_OPTIONS}\n> **Explanation**: a.\n", 7, "write the label exactly"),
    (f"{OK_OPTIONS}\nExplanation: a.\n", 7, "write the label exactly"),
    ("\n> _Reference answer:_ because\n", 5, "write the label exactly"),
    ("\n**Reference Answer:** because\n", 5, "write the label exactly"),
    # labels out of place, explanations missing
    (OK_OPTIONS, 3, "needs an explanation right after its options"),
    (f"{OK_OPTIONS}\nA paragraph.\n\n**Explanation:** a.\n", 3, "needs an explanation right after"),
    (f"**Explanation:** first.\n\n{OK_OPTIONS}", 4, "label out of place"),
    (f"{OK_OPTIONS}\n**Reference answer:** a.\n", 7, "label out of place"),
    ("\n**Explanation:** but no options.\n", 5, "has an `\\*\\*Explanation:\\*\\*` but no options"),
])
def test_a_malformed_question_is_an_error_naming_its_line(section, line, message):
    with pytest.raises(MMLabError, match=rf"^quiz.md:{line}: '### Q1. Hm\?' .*{message}"):
        parse_quiz(f"# Quiz\n\n### Q1. Hm?\n{section}", "quiz.md")


def test_rendered_quiz_keeps_the_markdown_inside_html_wrappers():
    quiz = parse_quiz(QUIZ)
    page = render_quiz(quiz, "01-foundation/01-demo")
    assert page.index('<div class="mmlab-score" data-quiz="01-foundation/01-demo" data-total="2">') < page.index("Q1")
    assert f'<div class="mmlab-q" data-qid="{quiz.choices[0].qid}" data-answer="1" markdown="1">' in page
    # options are a Markdown list; their letters sit in a span that quiz.js rewrites after shuffling
    assert '- <span class="mmlab-letter">B.</span> that one, with $x^2$ and a second line\n' in page
    # a wrong option's note waits in the explanation, tied to the option's index in the file
    assert ('<div class="mmlab-note" data-option="0" markdown="1">\n\n**Why not:** it is the other one, as the '
            'lesson shows.') in page
    assert "<summary>Reveal a model answer</summary>\n\nbecause\nit is." in page
    assert "- [x]" not in page and "- [ ]" not in page and "Pick one." in page


# --- links and navigation ----------------------------------------------------------------------------

def _tree(root, files):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_links_to_pages_stay_and_links_to_code_point_at_the_repository(tmp_path):
    _tree(tmp_path, {"README.md": "# Home\n", "src/mmlab/x.py": "", "modules/a/01-b/README.md": "# B\n",
                     "modules/a/01-b/results/p.png": "png", "modules/a/01-b/experiments/exp1.py": "",
                     "modules/a/02-c/README.md": "# C\n"})
    pages = {"README.md", "modules/a/01-b/README.md", "modules/a/02-c/README.md"}
    text = ("[home](../../../README.md) [next](../02-c/README.md#top) [next lesson](../02-c/) ![plot](results/p.png)\n"
            "[script](experiments/exp1.py) [code](../../../src/mmlab/x.py#L1) [folder](experiments/)\n"
            "[gone](missing.md) ![gone](results/missing.png) [web](https://example.com/a.py) [here](#why)\n"
            "`[in code](experiments/exp1.py)`\n```md\n[in a fence](experiments/exp1.py)\n```\n")
    out, images = rewrite_links(text, "modules/a/01-b/README.md", tmp_path, pages, "https://git.example/r")
    lines = out.splitlines()
    assert lines[0] == ("[home](../../../README.md) [next](../02-c/README.md#top) [next lesson](../02-c/README.md) "
                        "![plot](results/p.png)")
    assert lines[1] == ("[script](https://git.example/r/blob/main/modules/a/01-b/experiments/exp1.py) "
                        "[code](https://git.example/r/blob/main/src/mmlab/x.py#L1) "
                        "[folder](https://git.example/r/tree/main/modules/a/01-b/experiments)")
    assert lines[2] == text.splitlines()[2]  # a broken link is left for the strict build to report
    assert lines[3:] == text.splitlines()[3:]  # code is never touched
    assert images == {"modules/a/01-b/results/p.png"}
    assert rewrite_links("[script](experiments/exp1.py)", "modules/a/01-b/README.md", tmp_path, pages, None)[0] == \
        "script"  # no repository URL: the link becomes its text


def test_an_image_is_shown_or_left_for_the_strict_build_never_linked(tmp_path):
    _tree(tmp_path, {"README.md": "# Home\n", "modules/a/01-b/README.md": "# B\n", "modules/a/01-b/teaching.md": "",
                     "modules/a/01-b/results/p.png": "png", "modules/a/01-b/results/quick/q.png": "png",
                     "modules/a/01-b/results/quick/q.json": "{}", "modules/a/01-b/experiments/exp1.py": ""})
    pages = {"README.md", "modules/a/01-b/README.md", "modules/a/01-b/teaching.md"}
    kept = ("[![plot](results/p.png)](teaching.md) ![a script](experiments/exp1.py) [above the root](../../../..)\n"
            "![quick](results/quick/q.png) [quick](results/quick/q.json)\n")
    text = kept + '[![plot](results/p.png "P")](experiments/exp1.py) [root](../../..)'
    out, images = rewrite_links(text, "modules/a/01-b/README.md", tmp_path, pages, "https://git.example/r")
    assert out == kept + ('[![plot](results/p.png "P")](https://git.example/r/blob/main/modules/a/01-b/experiments/'
                          'exp1.py) [root](../../../README.md)')
    assert images == {"modules/a/01-b/results/p.png"}  # quick-run results are never shown (never committed)


def test_in_a_git_checkout_an_ignored_file_is_not_there_to_link(tmp_path):
    _tree(tmp_path, {"README.md": "# Home\n", ".gitignore": "scratch/\n", "scratch/x.py": "", "new.py": "",
                     "tracked.py": ""})
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "README.md", ".gitignore", "tracked.py"], cwd=tmp_path, check=True)
    text = "[a](scratch/x.py) [b](new.py) [c](tracked.py) [d](scratch)"
    out, _ = rewrite_links(text, "README.md", tmp_path, {"README.md"}, "https://git.example/r")
    assert out == "[a](scratch/x.py) [b](https://git.example/r/blob/main/new.py) " \
                  "[c](https://git.example/r/blob/main/tracked.py) [d](scratch)"


def test_navigation_follows_the_folders(tmp_path):
    files = {"README.md": "# Home\n", "ROADMAP.md": "# Paths\n", "modules/README.md": "# Lessons\n"}
    for lesson, title in (("01-basics/01-norm", "01 · Norm"), ("01-basics/02-rope", "02 · RoPE"),
                          ("02-more-things/01-new", "03 · New")):
        files |= {f"modules/{lesson}/README.md": f"# {title}\n", f"modules/{lesson}/quiz.md": "# Q\n",
                  f"modules/{lesson}/teaching.md": "# T\n", f"modules/{lesson}/code_guide.md": "# C\n"}
    files["modules/01-basics/01-norm/extra.md"] = "# An extra page\n"
    _tree(tmp_path, files)
    nav = make_nav(tmp_path, source_pages(tmp_path))
    lesson = "modules/01-basics/01-norm"
    assert nav == [
        {"Home": "README.md"}, {"Learning paths": "ROADMAP.md"},
        {"Lessons": ["modules/README.md",
                     {"Basics": [
                         {"01 · Norm": [f"{lesson}/README.md", {"Teaching": f"{lesson}/teaching.md"},
                                        {"Code guide": f"{lesson}/code_guide.md"}, {"Quiz": f"{lesson}/quiz.md"},
                                        {"An extra page": f"{lesson}/extra.md"}]},
                         {"02 · RoPE": ["modules/01-basics/02-rope/README.md",
                                        {"Teaching": "modules/01-basics/02-rope/teaching.md"},
                                        {"Code guide": "modules/01-basics/02-rope/code_guide.md"},
                                        {"Quiz": "modules/01-basics/02-rope/quiz.md"}]}]},
                     {"More things": [{"03 · New": ["modules/02-more-things/01-new/README.md",
                                                    {"Teaching": "modules/02-more-things/01-new/teaching.md"},
                                                    {"Code guide": "modules/02-more-things/01-new/code_guide.md"},
                                                    {"Quiz": "modules/02-more-things/01-new/quiz.md"}]}]}]},
    ]


def test_math_becomes_mathml_at_build_time():
    inline = to_mathml('<p>a <span class="arithmatex">\\(x^2 &lt; y\\)</span></p>')
    assert inline.startswith('<p>a <math xmlns="http://www.w3.org/1998/Math/MathML" display="inline">')
    assert "<msup><mi>x</mi><mn>2</mn></msup><mo>&#x0003C;</mo>" in inline
    block = to_mathml('<div class="arithmatex">\\[\\frac{1}{2}\\]</div>')
    assert block.startswith('<div class="mmlab-math"><math') and 'display="block"' in block and "<mfrac>" in block
    with pytest.raises(PluginError, match=r"teaching.md: cannot render the math '\\\\frac\{1\}\{'"):
        to_mathml('<span class="arithmatex">\\(\\frac{1}{\\)</span>', "teaching.md")


# --- the strict build ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """The real repository's site, built once (strict)."""
    return build_site(tmp_path_factory.mktemp("docs") / "site", ROOT)


def test_the_repository_builds_strictly_with_every_lesson(site):
    print(f"\nsite: {site.pages} pages in {site.seconds:.2f} s -> {site.out}")
    pages = source_pages(ROOT)
    assert {"README.md", "ROADMAP.md", f"{LESSON}/quiz.md"} <= set(pages)
    for page in pages:  # every Markdown file of the lessons is a page
        assert (site.out / page.replace("README.md", "index.md")).with_suffix(".html").is_file(), page
    built = [p for p in site.out.rglob("*.html") if p.name != "404.html" and p.relative_to(site.out).parts[0] != "zh"]
    assert site.pages == len(built) == len(pages)  # what MkDocs wrote, counted apart from what was staged
    home = (site.out / "index.html").read_text()
    for lesson in sorted(p.parent for p in (ROOT / "modules").glob("*/*/README.md")):
        title = (lesson / "README.md").read_text().splitlines()[0].removeprefix("# ")
        assert title.replace("&", "&amp;") in home, f"{title} is missing from the navigation"
    assert (site.out / "ROADMAP.html").is_file() and "Learning paths" in home
    quiz = (site.out / LESSON / "quiz.html").read_text()
    assert 'class="mmlab-score"' in quiz and quiz.count('class="mmlab-q"') == len(
        parse_quiz((ROOT / LESSON / "quiz.md").read_text()).choices)
    teaching = (site.out / LESSON / "teaching.html").read_text()
    assert '<img alt="' in teaching and (site.out / LESSON / "results" / "exp2_norm_comparison.png").is_file()
    assert "<table>" in teaching and "Measured by" in teaching  # result blocks render as tables
    assert 'class="highlight"' in (site.out / LESSON / "code_guide.html").read_text()  # highlighted code
    guide = (site.out / LESSON / "code_guide.html").read_text()
    assert "/blob/main/src/mmlab/model/norm.py" in guide  # code links point at the repository
    math = (site.out / "modules/03-training/01-tokenization/teaching.html").read_text()
    assert '<math xmlns="http://www.w3.org/1998/Math/MathML" display="block">' in math and "arithmatex" not in math
    assert (site.out / "search" / "search_index.json").is_file()
    assert not (ROOT / LESSON / "quiz.html").exists()  # sources untouched


def test_the_chinese_edition_is_the_same_site_under_zh(site):
    """Every page with a .zh.md twin is built under zh/ from it (the others fall back to English), with the
    language switch on every page, Chinese navigation and quiz words, and Chinese words in the search index."""
    pages = source_pages(ROOT)
    twins = [p for p in pages if (ROOT / p.replace(".md", ".zh.md")).is_file()]
    assert site.translated == len(twins) and set(pages) - set(twins) == {"DEVELOPERS.md"}  # for contributors
    html = lambda page: (site.out / page.replace("README.md", "index.md")).with_suffix(".html")  # noqa: E731
    for page in pages:
        zh = html(f"zh/{page}").read_text()
        assert '<html lang="zh"' in zh, page
        if page in twins:  # its own heading, not the English one
            heading = (ROOT / page.replace(".md", ".zh.md")).read_text().splitlines()[0].removeprefix("# ")
            assert heading.replace("&", "&amp;") in zh, page
    teaching = html(f"{LESSON}/teaching.md").read_text()
    assert f'href="../../../zh/{LESSON}/teaching.html" hreflang="zh"' in teaching  # the switch, to the twin
    home = html("zh/README.md").read_text()
    for label in ("首页", "学习路线", "课程", "讲解", "代码导读", "测验"):
        assert label in home, label
    zh_quiz = html(f"zh/{LESSON}/quiz.md").read_text()
    total = len(parse_quiz((ROOT / LESSON / "quiz.zh.md").read_text()).choices)
    assert f"共 {total} 道题，尚未作答" in zh_quiz and zh_quiz.count('class="mmlab-q"') == total
    assert "为什么不对：" in zh_quiz and "Why not:" not in zh_quiz
    zh_teaching = html(f"zh/{LESSON}/teaching.md").read_text()
    assert "<table>" in zh_teaching and "由 <code>" in zh_teaching  # result blocks, in Chinese
    index = json.loads((site.out / "search" / "search_index.json").read_text())
    assert index["config"]["lang"] == ["en", "zh"]
    zh_docs = [d for d in index["docs"] if d["location"].startswith("zh/")]
    assert zh_docs and any("\u200b归一化\u200b" in d["text"] for d in zh_docs)  # segmented into words


def test_a_broken_link_or_missing_image_fails_and_keeps_the_last_site(tmp_path):
    root, out = tmp_path / "repo", tmp_path / "site"
    _tree(root, {"README.md": "# Home\n\n[lesson](modules/01-a/01-b/README.md)\n",
                 "modules/01-a/01-b/README.md": "# 01 · B\n\n![plot](results/p.png) [code](../../../x.py)\n",
                 "modules/01-a/01-b/results/p.png": "png", "x.py": ""})
    assert build_site(out, root).pages == 2
    for broken in ("[teaching](teaching.md)", "![plot](results/nope.png)", "[up](../../../nothing/here.py)"):
        (root / "modules/01-a/01-b/README.md").write_text(f"# 01 · B\n\n{broken}\n")
        with pytest.raises(MMLabError, match=r"(?s)strict mode.*modules/01-a/01-b/README.md") as failed:
            build_site(out, root)
        assert str(failed.value).splitlines()[0] == \
            "the site did not build (strict mode): 1 problem, any earlier site is kept:"
        assert (out / "modules/01-a/01-b/index.html").is_file()  # the last good site stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo", "site"]  # no half-built folder left


def test_docs_build_command_reports_and_refuses_foreign_folders(tmp_path, capsys, monkeypatch):
    _tree(tmp_path / "repo", {"README.md": "# Home\n", "modules/01-a/01-b/README.md": "# 01 · B\n",
                              "modules/01-a/01-b/quiz.md": "# Quiz\n\n### Q1. Hm?\n- [x] a\n- [x] b\n"})
    monkeypatch.setenv("MMLAB_MODULES", str(tmp_path / "repo" / "modules"))
    assert main(["docs", "build", "--out", str(tmp_path / "site")]) == 1
    assert "quiz.md:3: '### Q1. Hm?' has 2 options marked [x]" in capsys.readouterr().err
    (tmp_path / "repo/modules/01-a/01-b/quiz.md").write_text("# Quiz\n\n### Q1. Hm?\n- [x] a\n- [ ] b\n\n"
                                                             "**Explanation:** a.\n")
    assert main(["docs", "build", "--out", str(tmp_path / "site")]) == 0
    assert "3 pages, 0 of them also in Chinese, in" in capsys.readouterr().out
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["docs", "build", "--out", str(tmp_path / "mine")]) == 1
    assert "is not a site built by `mmlab docs build`" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert main(["docs", "build", "--out", str(tmp_path / "site")]) == 1
    assert 'the site needs the docs extra' in capsys.readouterr().err


def _small_repo(root):
    _tree(root, {"README.md": "# Home\n\n[lesson](modules/01-a/01-b/README.md)\n",
                 "modules/01-a/01-b/README.md": "# 01 · B\n\n[code](../../../x.py)\n", "x.py": ""})


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_a_second_build_replaces_the_first_and_the_site_is_readable(tmp_path):
    root, out = tmp_path / "repo", tmp_path / "site"
    _small_repo(root)
    build_site(out, root)
    umask = os.umask(0o022)
    os.umask(umask)
    assert _mode(out) == 0o777 & ~umask  # not mkdtemp's private 0700
    (root / "README.md").write_text("# Home again\n")
    build_site(out, root)
    assert "Home again" in (out / "index.html").read_text() and _mode(out) == 0o777 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo", "site"]  # nothing parked or half-built left
    assert {"index.html", "modules/01-a/01-b/index.html"} <= set((out / MARKER).read_text().splitlines())


@pytest.mark.parametrize("stray", ["CNAME", ".git/HEAD", "modules/notes.txt"])
def test_a_build_refuses_to_replace_a_site_holding_anything_it_did_not_write(tmp_path, stray):
    root, out = tmp_path / "repo", tmp_path / "site"
    _small_repo(root)
    build_site(out, root)
    (out / stray).parent.mkdir(exist_ok=True)
    (out / stray).write_text("mine")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    first = stray.split("/")[0]  # .git before .git/HEAD
    with pytest.raises(MMLabError, match=rf"^{out} holds what `mmlab docs build` did not write \({first}"):
        build_site(out, root)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before and (out / stray).read_text() == "mine"


def test_a_failed_move_into_place_restores_the_earlier_site(tmp_path, monkeypatch):
    root, out = tmp_path / "repo", tmp_path / "site"
    _small_repo(root)
    build_site(out, root)
    (root / "README.md").write_text("# Home again\n")
    rename = Path.rename

    def failing(self, target):  # the new site cannot take the earlier one's place
        if Path(target) == out and self.name.startswith(".site.new-"):
            raise PermissionError(13, "Permission denied")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(MMLabError, match=rf"^cannot put the site at {out}: Permission denied$"):
        build_site(out, root)
    assert "Home again" not in (out / "index.html").read_text() and (out / MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo", "site"]


def test_unreadable_sources_and_unusable_folders_are_one_line_errors(tmp_path):
    root = tmp_path / "repo"
    _small_repo(root)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(MMLabError, match=rf"^cannot write the site into {tmp_path / 'a-file'}: .+$"):
        build_site(tmp_path / "a-file" / "site", root)
    (root / "modules/01-a/01-b/README.md").write_bytes(b"# 01 \xb7 B\n")  # Latin-1, not UTF-8
    with pytest.raises(MMLabError, match=rf"^{root / 'modules/01-a/01-b/README.md'}: not UTF-8 text .+$"):
        build_site(tmp_path / "site", root)


def test_the_default_site_folder_is_in_the_clone_when_run_inside_it(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    (root / "modules" / "01-a").mkdir(parents=True)
    monkeypatch.chdir(root / "modules" / "01-a")
    assert site_dir(None, root) == root / "build" / "site"
    monkeypatch.chdir(tmp_path)
    assert site_dir(None, root) == tmp_path / "build" / "site"
    assert site_dir("elsewhere", root) == tmp_path / "elsewhere"


def test_math_errors_name_the_exception_even_without_a_message(monkeypatch):
    def convert(tex, display):
        raise ValueError()

    monkeypatch.setattr("mmlab.docsite.hooks.convert", convert)
    with pytest.raises(PluginError, match=r"^p.md: cannot render the math 'x': ValueError$"):
        to_mathml('<span class="arithmatex">\\(x\\)</span>', "p.md")


def test_ports_are_checked_when_parsed_and_docs_serve_binds_before_building(tmp_path, capsys, monkeypatch):
    for argv in (["docs", "serve"], ["serve", "--ckpt", "x"]):
        for port in ("65536", "-1", "http"):
            with pytest.raises(SystemExit) as exited:
                main([*argv, "--port", port])
            assert exited.value.code == 2 and "--port" in capsys.readouterr().err
    monkeypatch.setattr("mmlab.docsite.build_site", lambda *a, **k: pytest.fail("built before binding"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["docs", "serve", "--port", str(port), "--out", str(tmp_path / "site")]) == 1
    assert f"mmlab: error: cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err


# --- the built site in a browser -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(site):
    server = make_server(site.out, port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_waiting_counts_an_exception_as_not_yet():  # a page that is loading answers with one
    answers = iter([RuntimeError("Execution context was destroyed."), False, True])

    def probe():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert wait_until(probe, timeout=5) and not wait_until(lambda: 1 / 0, timeout=0.1)


@pytest.fixture(scope="module")
def tab(tmp_path_factory):
    browser = Chromium(require_chromium(), tmp_path_factory.mktemp("profile"))
    try:
        yield Tab(browser)
    finally:
        browser.close()


def test_home_page_renders_with_search_and_the_dark_theme(served, tab):
    tab.open(served + "index.html")
    assert tab.js("document.title") == "MiniMind Lab"
    assert tab.js("document.querySelector('h1').textContent").startswith("MiniMind Lab")
    tabs = tab.js("[...document.querySelectorAll('.md-tabs__link')].map(a => a.textContent.trim())")
    assert tabs[:3] == ["Home", "Learning paths", "Lessons"]
    shot = tab.screenshot(OUTPUT / "home.png")
    print(f"\nscreenshot: {shot}")
    scheme = "document.body.getAttribute('data-md-color-scheme')"
    before = tab.js(scheme)
    tab.js("[...document.querySelectorAll('[data-md-component=palette] label')].find(l => l.offsetParent)"
           ".id = 'toggle'")
    tab.click("#toggle")  # the sun / moon button of the header
    assert wait_until(lambda: tab.js(scheme) != before) and {before, tab.js(scheme)} == {"default", "slate"}
    tab.click(".md-search__input")  # search runs in the browser, from the built index
    tab.send("Input.insertText", {"text": "RMSNorm"})
    assert wait_until(lambda: tab.js("document.querySelectorAll('.md-search-result__item').length") > 0)
    assert tab.errors() == []


def test_a_lesson_page_shows_its_plots_and_math(served, tab):
    tab.open(served + LESSON + "/teaching.html")
    images = tab.js("""[...document.querySelectorAll('article img')].map(i => [i.getAttribute('src'),
                       i.complete && i.naturalWidth])""")
    assert images and all(width > 0 for _, width in images), images
    tab.open(served + "modules/03-training/01-tokenization/teaching.html")
    assert tab.js("(() => { const r = document.querySelector('math[display=block]').getBoundingClientRect();"
                  " return r.width > 100 && r.height > 20; })()")  # MathML laid out by the browser itself
    assert tab.errors() == []


# Two different Chinese characters drawn in the page's font: with a CJK font they differ; without one, both are
# the same "missing glyph" box (tofu), which is how a page without fonts looks to a reader.
GLYPHS = """(() => {
  const font = '48px ' + getComputedStyle(document.querySelector('article')).fontFamily;
  const draw = (ch) => { const c = document.createElement('canvas'); c.width = c.height = 64;
    const g = c.getContext('2d'); g.font = font; g.fillText(ch, 4, 52);
    return Array.from(g.getImageData(0, 0, 64, 64).data).join(','); };
  const a = draw('归'), b = draw('化'), blank = draw(' ');
  return [a !== blank, b !== blank, a !== b];
})()"""


def test_a_chinese_lesson_page_shows_chinese_glyphs_and_switches_language(served, tab):
    tab.open(served + f"zh/{LESSON}/teaching.html")
    heading = (ROOT / LESSON / "teaching.zh.md").read_text().splitlines()[0].removeprefix("# ")
    assert tab.js("document.documentElement.lang") == "zh"
    assert tab.js("document.querySelector('article h1').textContent").startswith(heading)
    assert tab.js(GLYPHS) == [True, True, True], "no CJK font: Chinese text renders as boxes"
    images = tab.js("[...document.querySelectorAll('article img')].map(i => i.complete && i.naturalWidth)")
    assert images and all(w > 0 for w in images)  # the same plots as the English page
    shot = tab.screenshot(OUTPUT / "zh_teaching.png")
    print(f"\nscreenshot: {shot}")
    english = tab.js("document.querySelector('a[hreflang=en]').href")
    assert english == served + f"{LESSON}/teaching.html"  # the language switch leads to the English twin
    tab.click(".md-search__input")  # Chinese search, from the same built index
    tab.send("Input.insertText", {"text": "归一化"})
    assert wait_until(lambda: tab.js("document.querySelectorAll('.md-search-result__item').length") > 0)
    links = tab.js("[...document.querySelectorAll('.md-search-result__item a')].map(a => a.href)")
    assert any("/zh/" in h for h in links), links
    assert tab.errors() == []


def test_a_chinese_quiz_answers_in_chinese(served, tab):
    tab.open(served + f"zh/{LESSON}/quiz.html")
    tab.js("localStorage.clear()")
    tab.reload()
    total = len(parse_quiz((ROOT / LESSON / "quiz.zh.md").read_text()).choices)
    score = "document.querySelector('.mmlab-score-text').textContent"
    assert tab.js(score) == f"得分：0 / {total}（已答 0 题）"
    qid, answer = tab.js("(q => [q.dataset.qid, Number(q.dataset.answer)])(document.querySelector('.mmlab-q'))")
    # the same key as the English quiz's first question
    assert answer == parse_quiz((ROOT / LESSON / "quiz.md").read_text()).choices[0].answer
    tab.click(f"[data-qid='{qid}'] .mmlab-options li[data-option='{(answer + 1) % 4}']")
    verdict = tab.js(f"document.querySelector('[data-qid=\"{qid}\"] .mmlab-verdict').textContent")
    assert verdict == "不太对：正确选项已用 ✓ 标出。" and tab.js(score) == f"得分：0 / {total}（已答 1 题）"
    assert tab.js(f"getComputedStyle(document.querySelector('[data-qid=\"{qid}\"] .mmlab-explanation')).display") \
        == "block"
    assert tab.js("document.querySelector('.mmlab-reset').textContent") == "重新开始"
    shot = tab.screenshot(OUTPUT / "zh_quiz.png")
    print(f"\nscreenshot: {shot}")
    assert tab.errors() == []


def test_a_quiz_gives_feedback_and_keeps_its_score_across_a_reload(served, tab):
    url = served + LESSON + "/quiz.html"
    tab.open(url)
    tab.js("localStorage.clear()")
    tab.reload()
    score = "document.querySelector('.mmlab-score-text').textContent"
    total = len(parse_quiz((ROOT / LESSON / "quiz.md").read_text()).choices)
    assert tab.js(score) == f"Score: 0 / {total} (0 answered)"
    first, second = tab.js("[...document.querySelectorAll('.mmlab-q')].slice(0, 2).map(q => [q.dataset.qid, "
                           "Number(q.dataset.answer)])")
    wrong = 0 if first[1] != 0 else 1  # an option's index in the file
    option = "[data-qid='{}'] .mmlab-options li[data-option='{}']"
    explanation = f"getComputedStyle(document.querySelector('[data-qid=\"{first[0]}\"] .mmlab-explanation')).display"
    assert tab.js(explanation) == "none"  # hidden until answered
    tab.click(option.format(first[0], wrong))  # a wrong answer
    tab.click(option.format(second[0], second[1]))  # a right one
    # right and wrong in words too, not by colour alone
    state = """[...document.querySelectorAll('.mmlab-q')].slice(0, 2).map(q => [q.dataset.state,
                 q.querySelector('.mmlab-verdict').textContent, q.querySelectorAll('.mmlab-right').length,
                 q.querySelectorAll('.mmlab-wrong').length,
                 [...q.querySelectorAll('.mmlab-mark')].map(m => m.textContent).filter(t => t).sort()])"""
    expected = [["wrong", "Not quite: the right option is marked ✓.", 1, 1,
                 ["✓ the right answer", "✗ your answer: wrong"]], ["right", "Right.", 1, 0, ["✓ your answer: right"]]]
    assert tab.js(state) == expected and tab.js(explanation) == "block"
    # the note of the option chosen comes first, labelled with the letter the learner saw
    chosen = tab.js(f"(() => {{ const q = document.querySelector('[data-qid=\"{first[0]}\"]');"
                    " const n = q.querySelector('.mmlab-notes .mmlab-note');"
                    f" const li = q.querySelector('li[data-option=\"{wrong}\"]');"
                    " return [n.dataset.option, n.classList.contains('mmlab-chosen'),"
                    " n.querySelector('.mmlab-note-label').textContent,"
                    " li.querySelector('.mmlab-letter').textContent]; })()")
    assert chosen[:2] == [str(wrong), True] and chosen[2] == f"Your answer, {chosen[3][0]}: "
    assert tab.js(score) == f"Score: 1 / {total} (2 answered)"
    tab.click(option.format(first[0], first[1]))  # the first answer counts
    assert tab.js(score) == f"Score: 1 / {total} (2 answered)"
    tab.click(".mmlab-open details summary")  # an open question's model answer
    assert tab.js("document.querySelector('.mmlab-open details').open")
    tab.js("window.scrollTo(0, document.querySelector('.mmlab-score').offsetTop - 80)")  # the score, then Q1, Q2
    shot = tab.screenshot(OUTPUT / "quiz.png")
    print(f"\nscreenshot: {shot}")
    shown = ("[...document.querySelectorAll('.mmlab-q')].map(q => [...q.querySelectorAll('.mmlab-options li')]"
             ".map(li => li.dataset.option + li.querySelector('.mmlab-letter').textContent).join(' '))")
    order = tab.js(shown)
    tab.reload()
    assert tab.js(score) == f"Score: 1 / {total} (2 answered)" and tab.js(state) == expected
    assert tab.js(shown) == order  # the learner's seed keeps the order
    seed = int(tab.js("document.querySelector('.mmlab-score').dataset.seed"))
    assert tab.js(f"JSON.parse(localStorage.getItem('mmlab-quiz:{LESSON.removeprefix('modules/')}')).seed") == seed
    # the letters shown are A, B, C, D in the order shown, whatever the order in the file
    assert all([x[-2:] for x in row.split()] == ["A.", "B.", "C.", "D."][:len(row.split())] for row in order)
    tab.click(".mmlab-reset")
    assert tab.js(score) == f"Score: 0 / {total} (0 answered)"
    # another learner (another seed) sees other orders: over the lesson's questions, the file order is not kept
    orders = set()
    for other in (11, 12345, 987654321):
        tab.js(f"localStorage.clear(); localStorage.setItem('mmlab-learner-seed', '{other}')")
        tab.reload()
        orders.add(tuple(tab.js(shown)))
    assert len(orders) == 3
    in_file = tuple(" ".join(f"{i}{chr(65 + i)}." for i in range(len(row.split()))) for row in order)
    assert in_file not in orders
    assert tab.errors() == []
