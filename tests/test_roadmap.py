"""ROADMAP.md's learning paths: the lessons they link exist, and every `mmlab` command in them runs.

Each path's commands run in order, in one scratch folder (later commands use the runs of earlier ones),
at a tiny scale: SMOKE says, for each command, which flags shrink it. Two kinds are not run twice:
`mmlab exp run ID --quick` (test_lab.py runs every experiment with --smoke) and `mmlab recipe run NAME`
(test_recipes.py runs every recipe for a few steps); here their IDs and names must exist."""

import http.client
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ENV
from mmlab.cli import build_parser
from mmlab.lab.registry import discover
from mmlab.recipes import RECIPES

ROOT = Path(__file__).resolve().parents[1]
ROADMAP = ROOT / "ROADMAP.md"
PATHS = ("Quick start", "Systematic", "Deep mastery")
TRAIN = {"--max-iters": "2", "--batch-size": "2", "--eval-interval": "2", "--eval-batches": "1", "--log-interval": "1"}


def fewer_iters(old):
    return str(max(2, int(old or 0) // 500))  # 2000 -> 4, then a resume to 4000 -> 8


# command -> (flags to set, with None for a switch and a function of the old value to rescale it; exit codes
# that count as success; standard input). A command without a rule fails the test: add one.
SMOKE = {
    ("quickstart",): ({"--max-iters": "3", "--no-experiments": None}, {0}, None),
    ("docs", "serve"): ({"--port": "0"}, {0}, None),
    ("serve",): ({"--port": "0"}, {0}, None),
    ("model", "summary"): ({}, {0}, None),
    ("exp", "list"): ({}, {0}, None),
    ("data", "list"): ({}, {0}, None),
    # the exercise's template fails its checks until the learner fills it in
    ("exercise", "check-block"): ({}, {1}, None),
    ("tokenizer", "train"): ({}, {0}, None),
    ("train", "pretrain"): ({**TRAIN, "--max-iters": fewer_iters}, {0}, None),
    ("sample",): ({"--max-new-tokens": "8"}, {0}, None),
    ("speedrun",): ({"--scale": "0.002"}, {0}, None),
    ("train", "sft"): ({**TRAIN, "--eval-items": "4"}, {0}, None),
    ("train", "lora"): ({**TRAIN, "--eval-items": "4"}, {0}, None),
    ("train", "dpo"): ({**TRAIN, "--eval-items": "4"}, {0}, None),
    ("train", "grpo"): ({**TRAIN, "--group-size": "2", "--max-new-tokens": "8"}, {0}, None),
    ("train", "distill"): (TRAIN, {0}, None),
    ("eval",): ({"--limit": "4"}, {0}, None),
    ("quantize",): ({"--eval-tokens": "256"}, {0}, None),
    ("chat",): ({"--max-new-tokens": "4"}, {0}, "Hello\n/quit\n"),
    ("export", "hf"): ({}, {0}, None),
}
SERVERS = {("serve",), ("docs", "serve")}


def roadmap_commands() -> dict[str, list[list[str]]]:
    """The `mmlab ...` lines of the ```bash blocks, by section (the text before the first path is
    "Introduction"), in order, as argument lists without `mmlab`."""
    text = ROADMAP.read_text(encoding="utf-8")
    found = {}
    for section in re.split(r"^## ", text, flags=re.M):
        name = next((p for p in PATHS if section.startswith(p)), "Introduction" if not found else section[:40])
        blocks = re.findall(r"^[ \t]*```bash\n(.*?)^[ \t]*```", section, re.M | re.S)
        found[name] = [shlex.split(line, comments=True)[1:] for block in blocks for line in block.splitlines()
                       if line.strip().startswith("mmlab ")]
    return found


COMMANDS = roadmap_commands()


def rule(argv):
    key = next((k for k in sorted(SMOKE, key=len, reverse=True) if tuple(argv[:len(k)]) == k), None)
    assert key, f"`mmlab {shlex.join(argv)}` has no smoke rule in tests/test_roadmap.py: add one"
    return key, *SMOKE[key]


def shrink(argv, flags):
    argv = list(argv)
    for flag, value in flags.items():
        if flag not in argv:
            argv += [flag] if value is None else [flag, value(None) if callable(value) else value]
        elif value is not None:
            i = argv.index(flag) + 1
            argv[i] = value(argv[i]) if callable(value) else value
    return argv


def test_paths_have_commands_lessons_and_checklists():
    text = ROADMAP.read_text(encoding="utf-8")
    assert all(COMMANDS[path] for path in PATHS) and list(COMMANDS) == ["Introduction", *PATHS]
    # every `mmlab` line is in a ```bash block that this test reads
    assert sum(map(len, COMMANDS.values())) == len(re.findall(r"^\s*mmlab ", text, re.M))
    for link in re.findall(r"\]\((modules/[^)#]+)", text):
        assert (ROOT / link).exists(), link
    assert text.count("**Done when you can:**") == 3 and text.count("- [ ] ") >= 12
    assert "[ROADMAP.md](ROADMAP.md)" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_command_parses_and_has_a_smoke_rule():
    parser = build_parser()
    experiments = {s.id for s in discover(ROOT / "modules")}
    for argv in (a for commands in COMMANDS.values() for a in commands):
        parser.parse_args(argv)  # a wrong flag or subcommand exits here
        if argv[:2] == ["exp", "run"]:
            assert argv[2] in experiments and argv[3:] == ["--quick"], argv
        elif argv[:2] == ["recipe", "run"]:
            assert argv[2] in RECIPES, argv
        else:
            rule(argv)


def run_server(argv, env, cwd):
    """Start a server command, wait for the URL it prints, fetch the page, then stop it with Ctrl-C."""
    proc = subprocess.Popen([sys.executable, "-m", "mmlab.cli", *argv], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if m := re.search(r"http://127\.0\.0\.1:(\d+)/", line):
                conn = http.client.HTTPConnection("127.0.0.1", int(m[1]), timeout=30)
                conn.request("GET", "/")
                assert conn.getresponse().status == 200, "".join(lines)
                break
        else:
            pytest.fail(f"`mmlab {shlex.join(argv)}` printed no URL:\n{''.join(lines)}")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("path", COMMANDS)
def test_path_runs_at_smoke_scale(path, tmp_path, mirror_file):
    mirror = mirror_file("tinyshakespeare_input.txt").parent
    mirror_file("tinystories_train_head2MiB.txt")
    env = {**ENV, "MMLAB_DATA_MIRROR": str(mirror), "MMLAB_DATA_DIR": str(tmp_path / "cache"),
           "MMLAB_MODULES": str(ROOT / "modules")}
    work = tmp_path / "work"
    work.mkdir()
    (work / "modules").symlink_to(ROOT / "modules")  # paths in the commands are relative to a clone's root
    for argv in COMMANDS[path]:
        if argv[:2] in (["exp", "run"], ["recipe", "run"]):
            continue  # run by test_lab.py and test_recipes.py
        key, flags, ok, stdin = rule(argv)
        small = shrink(argv, flags)
        if key in SERVERS:
            run_server(small, env, work)
            continue
        proc = subprocess.run([sys.executable, "-m", "mmlab.cli", *small], env=env, cwd=work, input=stdin or "",
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode in ok, f"`mmlab {shlex.join(small)}` exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert os.listdir(work)
