"""The wall time of ``mmlab exp run --all --quick`` before and after: two commits of this repository, each
checked out in its own git worktree and run with its own code (``PYTHONPATH``), its own empty caches (the
shared post-training checkpoints are built once per run, as on a fresh machine) and the same data mirror, one
after the other on the whole machine. Prints JSON (and writes it with ``--out``): each side's wall time, the
seconds of every experiment and how they ran (one at a time, or side by side), and the CPU.

    python benchmarks/exp_suite_time.py --before dc17262 --after HEAD --out benchmarks/results/exp_suite_time.json
    python benchmarks/exp_suite_time.py --smoke --limit 3    # the machinery, in seconds (tests)

``--before`` defaults to dc17262, main when issue 23 was taken up (before fused ops, the dtype choice and the
side-by-side runner).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DONE = re.compile(r"^== (\S+): (ok|FAILED \(exit \d+\)) in ([\d.]+) s", re.M)


def worktree(ref: str, folder: Path) -> str:
    """Check ``ref`` out into ``folder``; returns its commit."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                            capture_output=True, text=True)
    if commit.returncode:
        raise SystemExit(f"exp_suite_time: {ref!r} is not a commit of {ROOT}")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(folder), commit.stdout.strip()],
                   check=True, capture_output=True)
    return commit.stdout.strip()


def run_suite(tree: Path, mode: str, limit: int | None, mirror: str, scratch: Path) -> dict:
    """``mmlab exp run --all`` of ``tree`` with its own code and caches (or its first ``limit`` experiments)."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "MMLAB_LAB_CACHE": str(scratch / "lab-cache"),
           "MMLAB_DATA_DIR": str(scratch / "data-cache"), "MMLAB_DATA_MIRROR": mirror,
           "MMLAB_MODULES": str(tree / "modules")}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(var, None)  # each side chooses its own threads, as a user's run would
    cli = [sys.executable, "-c", "import sys; from mmlab.cli import main; sys.exit(main())"]
    if limit is None:
        commands = [[*cli, "exp", "run", "--all", f"--{mode}"]]
    else:  # the first few, one command each side (the runner's choice of jobs is what --all measures)
        listed = subprocess.run([*cli, "exp", "list"], env=env, capture_output=True, text=True, check=True)
        ids = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()][:limit]
        commands = [[*cli, "exp", "run", i, f"--{mode}"] for i in ids]
    t0, output, codes = time.perf_counter(), "", []
    for command in commands:
        proc = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True)
        output += proc.stderr
        codes.append(proc.returncode)
    wall = time.perf_counter() - t0
    runs = {m[1]: {"ok": m[2] == "ok", "seconds": float(m[3])} for m in DONE.finditer(output)}
    return {"wall_s": wall, "exit_codes": sorted(set(codes)), "experiments": len(runs),
            "failed": sorted(k for k, v in runs.items() if not v["ok"]),
            "runs_s": {k: v["seconds"] for k, v in runs.items()},
            "sum_of_runs_s": sum(v["seconds"] for v in runs.values()),
            "side_by_side": "at a time" in output, "log_tail": output[-1500:]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="dc17262")
    ap.add_argument("--after", default="HEAD")
    ap.add_argument("--smoke", action="store_true", help="--smoke runs instead of --quick (tests)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N experiments, one command each")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    mirror = os.environ.get("MMLAB_DATA_MIRROR") or str(ROOT.parent / "shared" / "data")
    if not Path(mirror, "tinyshakespeare_input.txt").is_file():
        raise SystemExit(f"exp_suite_time: no data mirror at {mirror} (set MMLAB_DATA_MIRROR)")
    mode = "smoke" if args.smoke else "quick"

    from mmlab.device import environment

    sides = {}
    with tempfile.TemporaryDirectory(prefix="mmlab-exp-suite-") as tmp:
        try:
            for side, ref in (("before", args.before), ("after", args.after)):
                tree = Path(tmp) / side
                commit = worktree(ref, tree)
                print(f"{side}: {ref} ({commit[:10]}), mmlab exp run --all --{mode} ...", file=sys.stderr, flush=True)
                sides[side] = {"ref": ref, "commit": commit,
                               **run_suite(tree, mode, args.limit, mirror, Path(tmp) / f"{side}-scratch")}
                print(f"{side}: {sides[side]['wall_s']:.0f} s wall, {sides[side]['experiments']} experiments, "
                      f"failed {sides[side]['failed']}", file=sys.stderr, flush=True)
        finally:
            for side in ("before", "after"):
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(Path(tmp) / side)],
                               capture_output=True)
    common = sorted(set(sides["before"]["runs_s"]) & set(sides["after"]["runs_s"]))
    report = {
        "benchmark": "exp_suite_time", "mode": mode, "limit": args.limit,
        "before": sides["before"], "after": sides["after"],
        "speedup_wall": sides["before"]["wall_s"] / sides["after"]["wall_s"],
        "common_experiments": len(common),
        "speedup_sum_of_common_runs": (sum(sides["before"]["runs_s"][k] for k in common)
                                       / max(1e-9, sum(sides["after"]["runs_s"][k] for k in common))),
        "order": "before, then after, one after the other on the whole machine",
        "environment": environment(),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
