"""ROADMAP.md's learning paths: the lessons they link exist, and every `mmlab` command in them runs.

Each path's commands run in order, in one scratch folder (later commands use the runs of earlier ones),
at a tiny scale: SMOKE says, for each command, which flags shrink it and what its output must show. Two
kinds are not run here: `mmlab exp run ID --quick` (test_lab.py runs every experiment with --smoke) and
`mmlab recipe run NAME` (test_recipes.py runs every recipe for a few steps); here their IDs and names
must exist."""

import http.client
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from conftest import ENV
from mmlab.cli import build_parser
from mmlab.lab.registry import discover
from mmlab.quickstart import QUICK_EXPERIMENTS
from mmlab.recipes import RECIPES

ROOT = Path(__file__).resolve().parents[1]
ROADMAP = ROOT / "ROADMAP.md"
PATHS = ("Quick start", "Systematic", "Deep mastery")
TRAIN = {"--max-iters": "2", "--batch-size": "2", "--eval-interval": "2", "--eval-batches": "1", "--log-interval": "1"}


def fewer_iters(old):
    return str(max(2, int(old or 0) // 500))  # 2000 -> 4, then a resume to 4000 -> 8


class Smoke(NamedTuple):
    expect: str  # a pattern (re.M) that the command's standard output must hold: what it is there to do
    flags: dict | None = None  # flags to set: None for a switch, a function of the old value to rescale one
    rc: int = 0  # the exit status it must end with
    stdin: str | None = None


# command -> its Smoke rule. A command without a rule fails the test: add one.
CHECKPOINT = r"^checkpoint \S+/ckpt"
SMOKE = {
    ("quickstart",): Smoke(r"^final val loss \d.*\n(?s:.*)^sample more: mmlab sample --ckpt ",
                           {"--max-iters": "3", "--no-experiments": None}),
    ("docs", "serve"): Smoke(r"^built the site \(strict\): \d+ pages .* at http://127\.0\.0\.1:\d+/", {"--port": "0"}),
    ("serve",): Smoke(r"serving .* chat page: http://127\.0\.0\.1:\d+/$", {"--port": "0"}),  # a log line (stderr)
    ("model", "summary"): Smoke(r"^minimind-26m: \d+ layers, hidden \d+"),
    ("exp", "list"): Smoke(r"^01-normalization/exp1_deep_stack +results committed "),
    ("data", "list"): Smoke(r"^tinystories-train-2mib +[\d,]+ B "),
    # the exercise's template fails its checks (and says which) until the learner fills it in
    ("exercise", "check-block"): Smoke(r"^  \[FAIL\] .+\n(?s:.*)^\d+/\d+ checks pass$", rc=1),
    ("tokenizer", "train"): Smoke(r"^saved: \S+  \(use it with: mmlab train pretrain --tokenizer "),
    ("train", "pretrain"): Smoke(r"^done: \d+ steps in .* checkpoint \S+/ckpt", {**TRAIN, "--max-iters": fewer_iters}),
    ("sample",): Smoke(r"\AROMEO:", {"--max-new-tokens": "8"}),  # the prompt, then its continuation
    ("speedrun",): Smoke(r"^report card: \S+/report\.md", {"--scale": "0.002"}),
    ("train", "sft"): Smoke(CHECKPOINT + ", held-out report", {**TRAIN, "--eval-items": "4"}),
    ("train", "lora"): Smoke(CHECKPOINT + ", held-out report", {**TRAIN, "--eval-items": "4"}),
    ("train", "dpo"): Smoke(CHECKPOINT + ", held-out report", {**TRAIN, "--eval-items": "4"}),
    ("train", "grpo"): Smoke(CHECKPOINT + ", report", {**TRAIN, "--group-size": "2", "--max-new-tokens": "8"}),
    ("train", "distill"): Smoke(CHECKPOINT + ", report", TRAIN),
    ("eval",): Smoke(r"^synthetic-tasks: \d+ items", {"--limit": "4"}),
    ("quantize",): Smoke(r"^quantized checkpoint: \S+", {"--eval-tokens": "256"}),
    ("chat",): Smoke(r"^chatting with \S+ .*\n(?s:.*)bot> ", {"--max-new-tokens": "4"}, stdin="Hello\n/quit\n"),
    ("export", "hf"): Smoke(r"^exported \S+ -> \S+ \(.*config\.json"),
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


def rule(argv) -> tuple[tuple[str, ...], Smoke]:
    key = next((k for k in sorted(SMOKE, key=len, reverse=True) if tuple(argv[:len(k)]) == k), None)
    assert key, f"`mmlab {shlex.join(argv)}` has no smoke rule in tests/test_roadmap.py: add one"
    return key, SMOKE[key]


def shrink(argv, flags):
    argv = list(argv)
    for flag, value in (flags or {}).items():
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


def test_the_quickstart_command_runs_the_quick_start_paths_experiments():
    assert [experiment for _, experiment, _ in QUICK_EXPERIMENTS] == \
        [argv[2] for argv in COMMANDS["Quick start"] if argv[:2] == ["exp", "run"]]


def test_servers_the_paths_start_together_use_different_ports():
    parser = build_parser()
    ports = {shlex.join(argv): parser.parse_args(argv).port for commands in COMMANDS.values() for argv in commands
             if any(tuple(argv[:len(k)]) == k for k in SERVERS)}
    assert len(ports) >= 2 and len(set(ports.values())) == len(ports), ports


def run_server(argv, env, cwd, timeout=300):
    """Start a server command, wait (at most ``timeout`` s) for the URL it prints, fetch the page, then stop
    it with Ctrl-C, which must end it cleanly. Returns what it printed (stdout and stderr)."""
    # SIGINT back to its default in the child: a shell starts background jobs (`.ci/run &`, nohup) with SIGINT
    # ignored, which the child would inherit, and then Python never raises KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "mmlab.cli", *argv], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: queue.Queue = queue.Queue()

    def read():  # a thread, so that waiting for a line has a deadline
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    command, output, deadline = f"`mmlab {shlex.join(argv)}`", [], time.monotonic() + timeout
    try:
        while not (m := re.search(r"http://127\.0\.0\.1:(\d+)/", output[-1] if output else "")):
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"{command} printed no URL in {timeout} s:\n{''.join(output)}")
            if line is None:
                pytest.fail(f"{command} exited {proc.wait()} without printing a URL:\n{''.join(output)}")
            output.append(line)
        conn = http.client.HTTPConnection("127.0.0.1", int(m[1]), timeout=30)
        conn.request("GET", "/")
        assert conn.getresponse().status == 200, "".join(output)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    while (line := lines.get(timeout=20)) is not None:
        output.append(line)
    text = "".join(output)
    assert proc.returncode == 0 and "Traceback" not in text, f"{command} exited {proc.returncode} on Ctrl-C:\n{text}"
    return text


@pytest.mark.parametrize("path", COMMANDS)
def test_path_runs_at_smoke_scale(path, tmp_path, mirror_file):
    mirror = mirror_file("tinyshakespeare_input.txt").parent
    mirror_file("tinystories_train_head2MiB.txt")
    env = {**ENV, "MMLAB_DATA_MIRROR": str(mirror), "MMLAB_DATA_DIR": str(tmp_path / "cache"),
           "MMLAB_MODULES": str(ROOT / "modules")}
    work = tmp_path / "work"
    work.mkdir()
    (work / "modules").symlink_to(ROOT / "modules")  # paths in the commands are relative to a clone's root
    parser = build_parser()
    for argv in COMMANDS[path]:
        if argv[:2] in (["exp", "run"], ["recipe", "run"]):
            continue  # run by test_lab.py and test_recipes.py
        key, smoke = rule(argv)
        small = shrink(argv, smoke.flags)
        command = f"`mmlab {shlex.join(small)}`"
        if key in SERVERS:
            out = err = run_server(small, env, work)
        else:
            proc = subprocess.run([sys.executable, "-m", "mmlab.cli", *small], env=env, cwd=work,
                                  input=smoke.stdin or "", capture_output=True, text=True, timeout=600)
            out, err = proc.stdout, proc.stderr
            assert proc.returncode == smoke.rc, f"{command} exited {proc.returncode}:\n{err[-3000:]}"
        assert "mmlab: error:" not in err, f"{command}:\n{err[-3000:]}"
        assert re.search(smoke.expect, out, re.M), f"{command} did not print /{smoke.expect}/:\n{out[-3000:]}"
        written = getattr(parser.parse_args(small), "out", None)
        assert written is None or (work / written).exists(), f"{command} wrote nothing to {written}"
    if any(argv[:2] == ["docs", "serve"] for argv in COMMANDS[path]):  # outside the clone: here, not in the clone
        assert (work / "build" / "site" / "index.html").is_file()
