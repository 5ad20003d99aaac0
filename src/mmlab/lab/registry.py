"""Finding the tutorial's experiments: ``modules/<tier>/<lesson>/experiments/exp*.py``.

An experiment's ID is ``<lesson>/<script stem>``, e.g. ``01-normalization/exp1_deep_stack``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mmlab.errors import MMLabError


def modules_root() -> Path:
    """``$MMLAB_MODULES``, else a ``modules/`` folder in the working directory or above, else the
    one beside the installed package (an editable install from a clone)."""
    configured = os.environ.get("MMLAB_MODULES")
    if configured:
        return Path(configured)
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "modules").is_dir():
            return folder / "modules"
    beside = Path(__file__).resolve().parents[3] / "modules"
    if beside.is_dir():
        return beside
    raise MMLabError("cannot find the modules/ folder: run from a clone of MiniMind Lab or set MMLAB_MODULES")


@dataclass(frozen=True)
class ExperimentScript:
    id: str
    path: Path

    @property
    def lesson_dir(self) -> Path:
        return self.path.parent.parent

    @property
    def results_json(self) -> Path:
        return self.lesson_dir / "results" / f"{self.path.stem}.json"

    def question(self) -> str:
        import ast

        doc = ast.get_docstring(ast.parse(self.path.read_text()))
        return doc.strip().splitlines()[0] if doc else ""


def discover(root: Path | None = None) -> list[ExperimentScript]:
    root = root or modules_root()
    scripts = sorted(root.glob("*/*/experiments/exp*.py"))
    return [ExperimentScript(f"{p.parent.parent.name}/{p.stem}", p) for p in scripts]


def find(experiment_id: str, root: Path | None = None) -> ExperimentScript:
    scripts = discover(root)
    matches = [s for s in scripts if s.id == experiment_id or s.id.endswith("/" + experiment_id)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(s.id for s in scripts) or "none"
    if not matches:
        raise MMLabError(f"unknown experiment {experiment_id!r}; known: {known}")
    raise MMLabError(f"{experiment_id!r} is ambiguous: {', '.join(s.id for s in matches)}")


def run(script: ExperimentScript, mode: str = "full", extra: list[str] | None = None) -> tuple[int, float]:
    """Run one experiment in its own process (isolated seeds, threads and memory)."""
    args = [sys.executable, str(script.path)] + ([f"--{mode}"] if mode != "full" else []) + list(extra or [])
    t0 = time.perf_counter()
    code = subprocess.run(args).returncode
    return code, time.perf_counter() - t0
