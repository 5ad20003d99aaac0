"""The experiment runtime and the lessons: every experiment runs (smoke), committed results exist and
agree with the docs, code guides name real symbols, quizzes are well formed."""

import importlib
import json
import os
import re
import sys
from pathlib import Path

import pytest

from forkrun import run_script
from mmlab.docsite.quiz import parse_quiz
from mmlab.errors import MMLabError
from mmlab.lab import Experiment
from mmlab.lab.registry import discover
from mmlab.lab.render import BLOCK, fmt, render_text

ROOT = Path(__file__).resolve().parents[1]
MODULES = ROOT / "modules"
SCRIPTS = discover(MODULES)
LESSONS = sorted({s.lesson_dir for s in SCRIPTS})


def test_there_are_experiments():
    assert len(SCRIPTS) >= 5


class SmokeRuns:
    """Every experiment's ``--smoke`` run, as its own process (one torch thread each; forked after the imports,
    tests/forkrun.py), started in order on a pool of one worker per CPU core: the test of a script waits for its
    own run, so the runs overlap with each other instead of running one after another, and each test still
    checks its own script."""

    def __init__(self, root: Path, mirror: Path):
        from concurrent.futures import ThreadPoolExecutor

        self.root, self.mirror = root, mirror
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
        self.runs = {s.id: self.pool.submit(self.run, s) for s in SCRIPTS}

    def run(self, script):
        out = self.root / re.sub(r"[^\w.-]", "_", script.id)
        out.mkdir(parents=True)
        env = {**os.environ, "MMLAB_DATA_MIRROR": str(self.mirror), "MMLAB_DATA_DIR": str(out / "cache"),
               "OMP_NUM_THREADS": "1"}
        # forked from a process that imported torch and mmlab once (tests/forkrun.py), as `python script` runs
        return run_script(script.path, ["--smoke", "--out", str(out)], env, out / "logs"), out


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory):
    configured = os.environ.get("MMLAB_DATA_MIRROR")
    mirror = Path(configured) if configured else ROOT.parent / "shared" / "data"
    if not (mirror / "tinyshakespeare_input.txt").is_file():
        if configured:
            pytest.fail(f"tinyshakespeare_input.txt not found in MMLAB_DATA_MIRROR={configured}")
        pytest.skip(f"tinyshakespeare_input.txt not in the data mirror {mirror}")
    runs = SmokeRuns(tmp_path_factory.mktemp("smoke"), mirror)
    yield runs
    runs.pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.id)
def test_experiment_runs_in_smoke_mode(script, smoke_runs):
    proc, out = smoke_runs.runs[script.id].result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / f"{script.path.stem}.json").read_text())
    assert result["mode"] == "smoke" and result["question"] and result["findings"]
    assert all(isinstance(f["holds"], bool) for f in result["findings"])
    assert {"torch", "torch_threads", "cpu_model", "cpu_flags"} <= set(result["environment"])  # speed needs its CPU
    for name in result["figures"]:
        assert (out / name).stat().st_size > 5_000


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.id)
def test_full_results_are_committed(script):
    result = json.loads(script.results_json.read_text())
    assert result["mode"] == "full", f"{script.results_json} was not written by a full run"
    assert result["experiment"] == script.path.stem
    assert result["figures"], f"{script.results_json} has no plot: every experiment saves one (exp.savefig)"
    lesson = script.lesson_dir
    shown = "".join((lesson / doc).read_text() for doc in ("teaching.md", "README.md") if (lesson / doc).is_file())
    for name in result["figures"]:
        assert (script.results_json.parent / name).is_file()
        assert f"results/{name}" in shown, f"{name} is in no page of {lesson.name}: show it in teaching.md"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.id)
def test_script_has_help(script, capsys, monkeypatch):
    """``--help`` of each script, run in this process as ``python script --help`` would (its folder first on
    sys.path, its own ``_common``); the smoke runs above start every script as a process of its own."""
    import runpy

    monkeypatch.syspath_prepend(str(script.path.parent))
    monkeypatch.setattr(sys, "argv", [str(script.path), "--help"])
    monkeypatch.delitem(sys.modules, "_common", raising=False)  # each lesson has its own
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(script.path), run_name="__main__")
    sys.modules.pop("_common", None)
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "--quick" in out and "--smoke" in out and "--seed" in out


def _markdown_with_blocks():
    return [p for p in [*MODULES.rglob("*.md"), ROOT / "README.md"] if "mmlab:result" in p.read_text()]


@pytest.mark.parametrize("path", _markdown_with_blocks(), ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_blocks_match_committed_results(path):
    """Every number in a result block comes from committed JSON: re-rendering changes nothing."""
    text = path.read_text()
    assert text == render_text(text, path, MODULES), f"run `mmlab lab render`: {path} is out of date"
    for m in BLOCK.finditer(text):
        assert m["body"].strip(), f"empty result block {m['ref']} in {path}"


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.name)
def test_lesson_has_its_documents(lesson):
    for name in ("README.md", "teaching.md", "code_guide.md", "quiz.md"):
        assert (lesson / name).is_file(), name
    teaching = (lesson / "teaching.md").read_text()
    for heading in ("## Why", "## What", "## How"):
        assert heading in teaching
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", teaching):
        assert (lesson / image).is_file(), image


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.name)
def test_code_guide_symbols_and_links_exist(lesson):
    guide = (lesson / "code_guide.md").read_text()
    symbols = set(re.findall(r"`(mmlab(?:\.\w+)+)`", guide))
    assert symbols
    for dotted in symbols:
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ModuleNotFoundError:
                continue
            for attr in parts[i:]:
                assert hasattr(obj, attr), f"{dotted}: no attribute {attr}"
                obj = getattr(obj, attr)
            break
        else:
            pytest.fail(f"{dotted} does not import")
    for link in re.findall(r"\]\(([^)#]+\.py)\)", guide):
        assert (lesson / link).resolve().is_file(), link
    # the methods the prose names must exist too
    for cls, method in re.findall(r"`(\w+)\.(\w+)`", guide):
        matches = [s for s in symbols if s.endswith("." + cls)]
        if matches:
            module, _, name = matches[0].rpartition(".")
            assert hasattr(getattr(importlib.import_module(module), name), method), f"{cls}.{method}"


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.name)
def test_code_guide_python_examples_run(lesson, tmp_path, monkeypatch):
    """The code guide's ```python blocks run as written (together, in order)."""
    blocks = re.findall(r"```python\n(.*?)```", (lesson / "code_guide.md").read_text(), re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile("\n".join(blocks), str(lesson / "code_guide.md"), "exec"), {"__name__": "code_guide"})


# Lesson issues set the minimum number of questions: (multiple-choice, open).
QUIZ_MINIMUM = {"03-attention": (7, 3), "04-feedforward": (7, 3)}


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.name)
def test_quiz_is_well_formed(lesson):
    """Parsed by the site's own parser, which refuses a question without exactly one right option."""
    quiz = parse_quiz((lesson / "quiz.md").read_text(), lesson / "quiz.md")
    n_mc, n_open = QUIZ_MINIMUM.get(lesson.name, (5, 2))
    assert len(quiz.choices) >= n_mc and len(quiz.open_questions) >= n_open
    for q in quiz.choices:
        assert len(q.options) >= 3 and q.explanation.startswith("**Explanation:**"), q.heading


def test_runtime_writes_quick_results_apart_from_committed_ones(tmp_path):
    lesson = tmp_path / "lesson"
    exp = Experiment("exp9_demo", "A question?", mode="quick", lesson_dir=lesson)
    exp.finding("one is less than two", 1 < 2, one=1, two=2)
    exp.metric("nan_is_kept", float("nan"))
    path = exp.save()
    assert path == lesson / "results" / "quick" / "exp9_demo.json"
    data = json.loads(path.read_text())
    assert data["findings"][0]["holds"] is True and data["metrics"]["nan_is_kept"] == "nan"
    assert Experiment("x", "q", mode="smoke").out_dir != lesson / "results"


def test_exp_cli_lists_and_rejects_unknown(capsys):
    from mmlab.cli import main

    assert main(["exp", "list"]) == 0
    assert "01-normalization/exp1_deep_stack" in capsys.readouterr().out
    assert main(["exp", "run", "no_such_experiment"]) == 1
    assert main(["lab", "render", "--check"]) == 0


def test_table_cells_are_formatted_for_reading():
    assert [fmt(v) for v in (861440, 4096, 1.8604941, 12345.6, 0.00025, True, None, "a|b", float("nan"))] == [
        "861,440", "4096", "1.86", "12,346", "0.00025", "yes", "—", "a\\|b", "nan"]


def test_sample_blocks_render_as_text(tmp_path):
    (tmp_path / "results").mkdir()
    result = {"experiment": "recipe_demo", "mode": "full",
              "metrics": {"samples": [{"prompt": "ROMEO:", "seed": 0, "temperature": 0.8, "text": "ROMEO:\nAy."}],
                          "val_loss": 1.5}}
    (tmp_path / "results" / "recipe_demo.json").write_text(json.dumps(result))
    md = tmp_path / "doc.md"
    text = "<!-- mmlab:result recipe_demo text=samples -->\n<!-- /mmlab:result -->\n"
    out = render_text(text, md, None)
    assert "```text\nROMEO:\nAy.\n```" in out and "seed 0, temperature 0.8" in out
    with pytest.raises(MMLabError, match="val_loss"):
        render_text(text.replace("samples", "val_loss"), md, None)


def test_sample_text_cannot_break_the_markdown_or_the_block(tmp_path):
    (tmp_path / "results").mkdir()
    tricky = "a fence ``` inside\n<!-- /mmlab:result -->\nand after"
    result = {"experiment": "recipe_demo", "mode": "full", "metrics": {"samples": [{"title": "t", "text": tricky}]}}
    (tmp_path / "results" / "recipe_demo.json").write_text(json.dumps(result))
    md = tmp_path / "doc.md"
    text = "<!-- mmlab:result recipe_demo text=samples -->\n<!-- /mmlab:result -->\n"
    once = render_text(text, md, None)
    assert "````text\n" in once and once.count("<!-- /mmlab:result -->") == 1
    assert render_text(once, md, None) == once  # re-rendering is stable: the sample did not end the block
    result["metrics"]["samples"][0]["text"] = 42
    (tmp_path / "results" / "recipe_demo.json").write_text(json.dumps(result))
    with pytest.raises(MMLabError, match="sample 0: 'text' is a int"):
        render_text(text, md, None)


def test_runs_keyed_by_vocabulary_are_labelled_by_the_vocabulary_they_got():
    """A run labelled "16384" whose tokenizer has 7,710 tokens told the docs a story the run did not."""
    checked = 0
    for path in sorted(ROOT.glob("modules/*/*/results/*.json")):
        runs = json.loads(path.read_text()).get("metrics", {}).get("runs", {})
        for label, run in runs.items() if isinstance(runs, dict) else []:
            if isinstance(run, dict) and "vocab_size" in run and label.isdigit():
                assert int(label) == run["vocab_size"], f"{path}: run {label!r} has vocab_size {run['vocab_size']}"
                checked += 1
    assert checked >= 3
