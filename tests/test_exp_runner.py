"""`mmlab exp run --all` runs experiments side by side: each in its own process with its share of the cores,
the ones in ``registry.TIMED`` (speed findings) alone, every run's output printed whole."""

import json
import re
from pathlib import Path

import pytest

from mmlab.cli import main
from mmlab.lab.registry import discover, run_many

ROOT = Path(__file__).resolve().parents[1]

# Each fake experiment notes when it ran and with how many threads, and prints two lines.
SCRIPT = '''"""Question {name}?"""
import os, sys, time
t0 = time.time()
print("{name} first line", flush=True)
time.sleep({sleep})
print("{name} second line", flush=True)
with open(os.path.join(os.environ["SPANS"], "{name}"), "w") as f:
    f.write(f"{{t0}} {{time.time()}} {{os.environ.get('OMP_NUM_THREADS')}}")
sys.exit({code})
'''


def lesson(tmp_path, experiments, monkeypatch):
    """Fake experiments ``{name: (seconds, timed, exit code)}`` in a modules/ folder under ``tmp_path``."""
    monkeypatch.setattr("mmlab.lab.registry.TIMED",
                        frozenset(f"01-lesson/{name}" for name, (_, timed, _) in experiments.items() if timed))
    folder = tmp_path / "modules" / "01-tier" / "01-lesson" / "experiments"
    folder.mkdir(parents=True)
    for name, (sleep, _, code) in experiments.items():
        (folder / f"{name}.py").write_text(SCRIPT.format(name=name, sleep=sleep, code=code))
    return tmp_path / "modules"


def spans(folder):
    out = {}
    for f in folder.iterdir():
        start, end, threads = f.read_text().split()
        out[f.name] = (float(start), float(end), threads)
    return out


def test_runs_overlap_timed_ones_run_alone_and_outputs_stay_whole(tmp_path, monkeypatch):
    root = lesson(tmp_path, {"exp1_a": (0.6, False, 0), "exp2_b": (0.6, False, 0), "exp3_c": (0.6, False, 0),
                             "exp4_t": (0.3, True, 0), "exp5_f": (0.1, False, 3)}, monkeypatch)
    (tmp_path / "spans").mkdir()
    monkeypatch.setenv("SPANS", str(tmp_path / "spans"))
    monkeypatch.setattr("mmlab.lab.registry.cpu_cores", lambda: 2)
    scripts = discover(root)
    assert [s.timed() for s in scripts] == [False, False, False, True, False]
    done = run_many(scripts, "smoke", jobs=2)
    by = {f.script.path.stem: f for f in done}
    assert {n: f.code for n, f in by.items()} == {"exp1_a": 0, "exp2_b": 0, "exp3_c": 0, "exp4_t": 0, "exp5_f": 3}
    for name, f in by.items():  # each run's own output, in order, nothing of another run's
        assert re.fullmatch(rf"{name} first line\n{name} second line\n", f.output), f.output
    s = spans(tmp_path / "spans")
    t_start, t_end, t_threads = s.pop("exp4_t")
    assert t_threads == "2"  # alone, with every core
    assert all(end <= t_start or start >= t_end for start, end, _ in s.values())  # nothing beside it
    assert {threads for *_, threads in s.values()} == {"1"}  # two side by side: one core each
    overlaps = [a for a in s for b in s if a < b and s[a][0] < s[b][1] and s[b][0] < s[a][1]]
    assert overlaps  # some ran side by side


def test_the_command_reports_failures_and_progress(tmp_path, monkeypatch, capsys):
    root = lesson(tmp_path, {"exp1_a": (0.1, False, 0), "exp2_b": (0.1, False, 1)}, monkeypatch)
    (tmp_path / "spans").mkdir()
    monkeypatch.setenv("SPANS", str(tmp_path / "spans"))
    monkeypatch.setenv("MMLAB_MODULES", str(root))
    assert main(["exp", "run", "--all", "--smoke", "--jobs", "2"]) == 1
    err = capsys.readouterr().err
    assert "2 experiments (smoke), 2 at a time" in err and "[2/2," in err and "ETA" in err
    assert "01-lesson/exp2_b: FAILED (exit 1)" in err and "1/2 experiments ok" in err
    assert "failed: 01-lesson/exp2_b" in err
    assert main(["exp", "run", "--all", "--smoke", "--jobs", "1"]) == 1  # one after another, as before
    with pytest.raises(SystemExit):
        main(["exp", "run", "--all", "--jobs", "0"])


SPEED = re.compile(r"faster|slower|speed|tokens/s|tok/s|throughput|time to first token|per second", re.I)


@pytest.mark.parametrize("script", discover(ROOT / "modules"), ids=lambda s: s.id)
def test_an_experiment_with_speed_findings_is_marked_timed(script):
    """A finding about speed measured beside another experiment would measure the neighbour: such scripts say
    are listed in ``mmlab.lab.registry.TIMED`` (read from their committed findings, so a new speed finding cannot
    slip through unlisted)."""
    findings = json.loads(script.results_json.read_text())["findings"]
    speed = [f["claim"] for f in findings if SPEED.search(f["claim"])]
    if speed:
        assert script.timed(), f"{script.id} has speed findings ({speed[0]!r}) but is not in mmlab.lab.registry.TIMED"


def test_every_timed_entry_names_an_experiment():
    from mmlab.lab.registry import TIMED

    assert TIMED - {s.id for s in discover(ROOT / "modules")} == set()


def test_an_experiment_that_meets_bad_input_says_so_in_one_line(tmp_path, capsys):
    """Missing data (offline, no mirror) or any other MMLabError: the script's name and the message, exit 2, no
    traceback, and no results written."""
    from mmlab.data.registry import DataError
    from mmlab.lab import Experiment

    def main(exp):
        raise DataError("cannot download dataset 'tinyshakespeare' (offline?): set MMLAB_DATA_MIRROR")

    with pytest.raises(SystemExit) as stop:
        Experiment.cli("Q?", main, str(tmp_path / "experiments" / "exp9_x.py"),
                       ["--smoke", "--out", str(tmp_path / "o")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err == "exp9_x.py: error: cannot download dataset 'tinyshakespeare' (offline?): set MMLAB_DATA_MIRROR\n"
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
