"""Finding the tutorial's experiments: ``modules/<tier>/<lesson>/experiments/exp*.py``.

An experiment's ID is ``<lesson>/<script stem>``, e.g. ``01-normalization/exp1_deep_stack``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
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


# Experiments whose findings compare wall-clock speed: ``mmlab exp run --all`` runs each alone, with every core,
# so it measures a quiet machine rather than its neighbour. A test reads the committed findings and fails when one
# about speed belongs to an experiment missing here. (Kept here rather than in the scripts: a mark that does not
# change what a script computes should not make its committed results look older than its code.)
TIMED = frozenset({
    "01-normalization/exp3_layernorm_vs_rmsnorm",
    "01-normalization/exp5_precision",
    "03-attention/exp5_gqa",
    "03-attention/exp6_sdpa_vs_explicit",
    "04-feedforward/exp2_expansion_sweep",
    "02-transformer-block/exp3_depth_width",
    "03-mixture-of-experts/exp1_dense_vs_moe",
    "03-mixture-of-experts/exp3_topk",
    "04-modern-attention/exp5_decode_speed",
    "01-tokenization/exp1_bpe_side_by_side",
    "01-tokenization/exp2_vocab_sweep",
    "01-tokenization/exp3_char_vs_bpe",
    "02-data/exp2_padding_packing",
    "03-pretraining/exp3_batch_accumulation",
    "03-pretraining/exp4_optimizers",
    "03-pretraining/exp5_precision",
    "05-lora/exp1_rank_vs_full",
    "08-distillation/exp3_step_cost",
    "01-kv-cache/exp1_cache_speed",
    "01-kv-cache/exp2_cache_memory",
    "02-quantization/exp1_size_speed_quality",
    "03-decoding/exp4_speculative",
    "06-serving/exp1_throughput_latency",
    "06-serving/exp3_prefix_caching",
})


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

    def timed(self) -> bool:
        """Whether it is listed in ``TIMED``: its findings compare wall-clock speed, so it runs alone, with every
        core, even when other experiments run side by side."""
        return self.id in TIMED

    def last_runtime(self, mode: str) -> float:
        """Seconds its last run in this mode took (its results JSON), else its full run's; 0 when unknown."""
        import json

        for path in (self.lesson_dir / "results" / "quick" / f"{self.path.stem}.json", self.results_json):
            if mode != "quick" and "quick" in path.parts:
                continue
            try:
                return float(json.loads(path.read_text())["runtime_s"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return 0.0


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


def _command(script: ExperimentScript, mode: str, extra: list[str] | None) -> list[str]:
    return [sys.executable, str(script.path)] + ([f"--{mode}"] if mode != "full" else []) + list(extra or [])


def run(script: ExperimentScript, mode: str = "full", extra: list[str] | None = None) -> tuple[int, float]:
    """Run one experiment in its own process (isolated seeds, threads and memory)."""
    t0 = time.perf_counter()
    code = subprocess.run(_command(script, mode, extra)).returncode
    return code, time.perf_counter() - t0


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


@dataclass
class Finished:
    script: ExperimentScript
    code: int
    seconds: float
    output: str  # what the run printed (stdout and stderr together)


def run_many(scripts: list[ExperimentScript], mode: str, jobs: int,
             on_start: Callable[[ExperimentScript, int], None] | None = None,
             on_done: Callable[[Finished], None] | None = None) -> list[Finished]:
    """Run experiments ``jobs`` at a time, each in its own process with ``cores // jobs`` torch threads
    (a small model does not get twice as fast on two threads, but two models run side by side nearly do). The
    longest (by their last run) start first, so the last to finish is a short one. A ``TIMED`` experiment runs
    alone with every core, so its speed findings are measured on a quiet machine. Each run's output is kept
    and handed to ``on_done`` whole, never interleaved with another's."""
    import tempfile

    cores = cpu_cores()
    jobs = max(1, min(jobs, len(scripts) or 1))
    threads = max(1, cores // jobs)
    pending = sorted(scripts, key=lambda s: -s.last_runtime(mode)) if jobs > 1 else list(scripts)
    running: list[tuple[ExperimentScript, subprocess.Popen, float, object, bool]] = []
    done: list[Finished] = []
    while pending or running:
        alone = any(timed for *_, timed in running)
        while pending and not alone and len(running) < jobs:
            # a timed run waits until nothing else runs, and then nothing else starts beside it
            pick = next((s for s in pending if not s.timed()), None) if running else pending[0]
            if pick is None:
                break
            pending.remove(pick)
            timed = jobs > 1 and pick.timed()
            env = dict(os.environ)
            if jobs > 1:
                env["OMP_NUM_THREADS"] = str(cores if timed else threads)
            log = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")  # noqa: SIM115 (closed at exit)
            if on_start:
                on_start(pick, int(env.get("OMP_NUM_THREADS", 0) or 0))
            proc = subprocess.Popen(_command(pick, mode, None), stdout=log, stderr=subprocess.STDOUT, env=env)
            running.append((pick, proc, time.perf_counter(), log, timed))
            alone = timed
        time.sleep(0.05)
        for entry in list(running):
            script, proc, t0, log, _ = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            log.seek(0)
            finished = Finished(script, proc.returncode, time.perf_counter() - t0, log.read())
            log.close()
            done.append(finished)
            if on_done:
                on_done(finished)
    return done
