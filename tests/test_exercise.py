"""The "build a decoder block" exercise: the checker passes the from-scratch solution, and catches the
skeleton and each classic mistake with a message that says which part is wrong."""

import subprocess
import sys
from pathlib import Path

import pytest

from mmlab.lab.exercise import check_block_file

EXERCISE = Path(__file__).resolve().parents[1] / "modules" / "02-architecture" / "02-transformer-block" / "exercise"
SOLUTION = (EXERCISE / "solution.py").read_text()


def failed(checks):
    return {c.name: c.detail for c in checks if not c.ok}


def test_the_solution_matches_mmlabs_block():
    checks = check_block_file(EXERCISE / "solution.py")
    assert not failed(checks) and len(checks) == 7


def test_the_skeleton_fails_every_computation_with_its_todo():
    bad = failed(check_block_file(EXERCISE / "my_block.py"))
    assert len(bad) == 6 and all("not implemented yet: TODO" in d for d in bad.values())


MISTAKES = {
    "no causal mask": ("scores.masked_fill(~mask, float(\"-inf\"))", "scores", {"attention", "causal"}),
    "no 1/sqrt(d) scaling": ("/ math.sqrt(self.head_dim)", "", {"attention"}),
    "norm ignores its weight": (".to(x.dtype) * self.weight", ".to(x.dtype)", {"RMSNorm"}),
    "no residual around the FFN": ("return x + self.ffn(", "return self.ffn(", {"whole block"}),
    "GELU instead of SiLU gate": ("F.silu(self.gate_proj(x))", "F.gelu(self.gate_proj(x))", {"SwiGLU"}),
    "RoPE not applied to k": ("k * cos + rotate_half(k) * sin", "k", {"attention"}),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_each_classic_mistake_is_caught_where_it_is(tmp_path, mistake):
    old, new, where = MISTAKES[mistake]
    assert old in SOLUTION
    path = tmp_path / "mine.py"
    path.write_text(SOLUTION.replace(old, new))
    bad = failed(check_block_file(path))
    assert bad, f"{mistake} was not caught"
    assert all(any(w in name for name in bad) for w in where), bad


def test_cli_exit_codes_and_clear_errors(tmp_path):
    def cli(path):
        return subprocess.run([sys.executable, "-m", "mmlab.cli", "exercise", "check-block", str(path)],
                              capture_output=True, text=True, timeout=120)

    ok = cli(EXERCISE / "solution.py")
    assert ok.returncode == 0 and "your block matches mmlab's" in ok.stdout
    assert cli(EXERCISE / "my_block.py").returncode == 1
    missing = cli(tmp_path / "nope.py")
    assert missing.returncode == 1 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "empty.py").write_text("x = 1\n")
    empty = cli(tmp_path / "empty.py")
    assert empty.returncode == 1 and "defines no class MyBlock" in empty.stderr
    (tmp_path / "broken.py").write_text("def (:\n")
    broken = cli(tmp_path / "broken.py")
    assert broken.returncode == 1 and "importing it failed: SyntaxError" in broken.stderr
