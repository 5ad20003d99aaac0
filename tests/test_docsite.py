"""The learning site: quiz.md -> interactive page, link rewriting, the navigation, the strict build of the
real lessons, and the built site driven in headless Chromium (home, a plot, a quiz, the score after a
reload, search, the dark theme, no console errors). Screenshots go to tests/output/site/."""

import threading
from pathlib import Path

import pytest
from mkdocs.exceptions import PluginError

from browser import Chromium, Tab, require_chromium, wait_until
from mmlab.cli import main
from mmlab.docsite.build import build_site, make_nav, make_server, rewrite_links, source_pages
from mmlab.docsite.hooks import to_mathml
from mmlab.docsite.quiz import Choice, OpenQuestion, parse_quiz, render_quiz
from mmlab.errors import MMLabError

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "tests" / "output" / "site"
LESSON = "modules/01-foundation/01-normalization"

QUIZ = """# Quiz · Demo

Pick one.

### Q1. Which is `right`?
- [ ] A. this one
- [x] B. that one, with $x^2$
  and a second line
- [ ] C. neither

> **Explanation:** B is right.
> Because.

### 2. Unlettered?

```text
### not a heading: inside a fence
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
    assert first.explanation == "**Explanation:** B is right.\nBecause."
    assert second.answer == 0 and second.body.startswith("```text\n### not a heading")  # fences are kept whole
    assert second.explanation == "**Explanation:** a plain paragraph works too."
    [open_q] = quiz.open_questions
    assert open_q.heading == "### O1. Why?" and open_q.answer == "because\nit is."
    assert [type(p).__name__ for p in quiz.parts] == ["str", "Choice", "Choice", "str", "OpenQuestion"]
    assert first.qid != second.qid and first.qid == parse_quiz(QUIZ).choices[0].qid  # stable ids


@pytest.mark.parametrize("options, message", [
    ("- [ ] a\n- [ ] b\n", "0 options marked"),
    ("- [x] a\n- [x] b\n", "2 options marked"),
    ("- [x] a\n", "at least two options"),
    ("- [x] a\n- [ ] b\n\ntext\n\n- [ ] c\n", "one list"),
])
def test_a_malformed_question_is_an_error_naming_its_line(options, message):
    with pytest.raises(MMLabError, match=rf"quiz.md:3: '### Q1. Hm\?'.*{message}"):
        parse_quiz(f"# Quiz\n\n### Q1. Hm?\n{options}", "quiz.md")


def test_rendered_quiz_keeps_the_markdown_inside_html_wrappers():
    quiz = parse_quiz(QUIZ)
    page = render_quiz(quiz, "01-foundation/01-demo")
    assert page.index('<div class="mmlab-score" data-quiz="01-foundation/01-demo" data-total="2">') < page.index("Q1")
    assert f'<div class="mmlab-q" data-qid="{quiz.choices[0].qid}" data-answer="1" markdown="1">' in page
    assert "- B. that one, with $x^2$ and a second line\n" in page  # options are a Markdown list
    assert "<summary>Reveal the reference answer</summary>\n\nbecause\nit is." in page
    assert "- [x]" not in page and "- [ ]" not in page and "Pick one." in page


def test_the_lessons_quizzes_parse():
    for path in sorted((ROOT / "modules").glob("*/*/quiz.md")):
        quiz = parse_quiz(path.read_text(), path)
        assert quiz.choices and all(isinstance(q, Choice) for q in quiz.choices), path
        assert all(isinstance(q, OpenQuestion) and q.answer for q in quiz.open_questions), path


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
    assert site.pages == len(pages) and {"README.md", "ROADMAP.md", f"{LESSON}/quiz.md"} <= set(pages)
    for page in pages:  # every Markdown file of the lessons is a page
        assert (site.out / page.replace("README.md", "index.md")).with_suffix(".html").is_file(), page
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


def test_a_broken_link_or_missing_image_fails_and_keeps_the_last_site(tmp_path):
    root, out = tmp_path / "repo", tmp_path / "site"
    _tree(root, {"README.md": "# Home\n\n[lesson](modules/01-a/01-b/README.md)\n",
                 "modules/01-a/01-b/README.md": "# 01 · B\n\n![plot](results/p.png) [code](../../../x.py)\n",
                 "modules/01-a/01-b/results/p.png": "png", "x.py": ""})
    assert build_site(out, root).pages == 2
    for broken in ("[teaching](teaching.md)", "![plot](results/nope.png)", "[up](../../../nothing/here.py)"):
        (root / "modules/01-a/01-b/README.md").write_text(f"# 01 · B\n\n{broken}\n")
        with pytest.raises(MMLabError, match=r"(?s)strict mode.*modules/01-a/01-b/README.md"):
            build_site(out, root)
        assert (out / "modules/01-a/01-b/index.html").is_file()  # the last good site stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo", "site"]  # no half-built folder left


def test_docs_build_command_reports_and_refuses_foreign_folders(tmp_path, capsys, monkeypatch):
    _tree(tmp_path / "repo", {"README.md": "# Home\n", "modules/01-a/01-b/README.md": "# 01 · B\n",
                              "modules/01-a/01-b/quiz.md": "# Quiz\n\n### Q1. Hm?\n- [x] a\n- [x] b\n"})
    monkeypatch.setenv("MMLAB_MODULES", str(tmp_path / "repo" / "modules"))
    assert main(["docs", "build", "--out", str(tmp_path / "site")]) == 1
    assert "quiz.md:3: '### Q1. Hm?' has 2 options marked [x]" in capsys.readouterr().err
    (tmp_path / "repo/modules/01-a/01-b/quiz.md").write_text("# Quiz\n\n### Q1. Hm?\n- [x] a\n- [ ] b\n")
    assert main(["docs", "build", "--out", str(tmp_path / "site")]) == 0
    assert "3 pages in" in capsys.readouterr().out
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["docs", "build", "--out", str(tmp_path / "mine")]) == 1
    assert "is not a site built by `mmlab docs build`" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert main(["docs", "build", "--out", str(tmp_path / "site")]) == 1
    assert 'the site needs the docs extra' in capsys.readouterr().err


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
    wrong = 1 if first[1] != 0 else 2  # nth-child counts from 1
    explanation = f"getComputedStyle(document.querySelector('[data-qid=\"{first[0]}\"] .mmlab-explanation')).display"
    assert tab.js(explanation) == "none"  # hidden until answered
    tab.click(f"[data-qid='{first[0]}'] .mmlab-options li:nth-child({wrong})")  # a wrong answer
    tab.click(f"[data-qid='{second[0]}'] .mmlab-options li:nth-child({second[1] + 1})")  # a right one
    state = """[...document.querySelectorAll('.mmlab-q')].slice(0, 2).map(q => [q.dataset.state,
                 q.querySelector('.mmlab-verdict').textContent, q.querySelectorAll('.mmlab-right').length,
                 q.querySelectorAll('.mmlab-wrong').length])"""
    expected = [["wrong", "Not quite: the right option is marked in green.", 1, 1], ["right", "Right.", 1, 0]]
    assert tab.js(state) == expected and tab.js(explanation) == "block"
    assert tab.js(score) == f"Score: 1 / {total} (2 answered)"
    tab.click(f"[data-qid='{first[0]}'] .mmlab-options li:nth-child({first[1] + 1})")  # the first answer counts
    assert tab.js(score) == f"Score: 1 / {total} (2 answered)"
    tab.click(".mmlab-open details summary")  # an open question's reference answer
    assert tab.js("document.querySelector('.mmlab-open details').open")
    tab.js("window.scrollTo(0, document.querySelector('.mmlab-score').offsetTop - 80)")  # the score, then Q1, Q2
    shot = tab.screenshot(OUTPUT / "quiz.png")
    print(f"\nscreenshot: {shot}")
    tab.reload()
    assert tab.js(score) == f"Score: 1 / {total} (2 answered)" and tab.js(state) == expected
    tab.click(".mmlab-reset")
    assert tab.js(score) == f"Score: 0 / {total} (0 answered)"
    assert tab.errors() == []
