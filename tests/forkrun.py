"""Run a Python script as ``python script args`` would, but forked from a process that imported torch, matplotlib
and mmlab once (multiprocessing's forkserver): each of test_lab.py's ~90 experiment smoke runs skips the ~2 s of
imports a fresh interpreter pays (about a third of a smoke run's time).

The child starts from the server's state, not a copy of the test's: the environment, argv, sys.path[0] (the
script's folder, so a lesson's ``_common`` is its own), one torch thread per OMP_NUM_THREADS, and standard output
and error in files, as a new process would have them. mmlab reads its environment when called, not on import."""

from __future__ import annotations

import multiprocessing
import os
import runpy
import subprocess
import sys
import traceback
from pathlib import Path

PRELOAD = ["numpy", "torch", "matplotlib", "matplotlib.pyplot", "mmlab.lab", "mmlab.lab.lm", "mmlab.model",
           "mmlab.train"]
try:
    _CTX = multiprocessing.get_context("forkserver")
    _CTX.set_forkserver_preload(PRELOAD)
except ValueError:  # no forkserver (Windows): a fresh interpreter per run, as before
    _CTX = None


def _child(script: str, args: list[str], env: dict[str, str], out: str, err: str) -> None:
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115 -- for the life of the child
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
    os.environ.clear()
    os.environ.update(env)
    import torch

    torch.set_num_threads(int(env.get("OMP_NUM_THREADS") or 1))
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).parent)
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_script(script: Path, args: list[str], env: dict[str, str], logs: Path,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """``python script *args`` with environment ``env``; its output is kept in ``logs``/{stdout,stderr}.txt."""
    logs.mkdir(parents=True, exist_ok=True)
    if _CTX is None:
        return subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True,
                              timeout=timeout)
    out, err = logs / "stdout.txt", logs / "stderr.txt"
    proc = _CTX.Process(target=_child, args=(str(script), list(args), dict(env), str(out), str(err)))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        raise subprocess.TimeoutExpired([str(script), *args], timeout)
    def read(path: Path) -> str:  # missing when the child died before it started the script
        return path.read_text(errors="replace") if path.is_file() else f"(no {path.name}: the fork failed)"

    return subprocess.CompletedProcess([str(script), *args], proc.exitcode, read(out), read(err))
