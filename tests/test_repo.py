"""Repository hygiene: lint, the README's example runs, the console script is declared."""

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff not installed (it is in the [test] extra)")
    result = subprocess.run([ruff, "check", "src", "tests"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_python_examples_run():
    """Every ```python block of the README runs as written."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_readme_has_the_two_ci_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for marker in ("ci:setup", "ci:test"):
        assert re.search(rf"<!-- {marker} -->\s*```bash\n.+?```", readme, re.S), marker


def test_console_script_is_declared():
    scripts = metadata.entry_points(group="console_scripts")
    assert any(ep.name == "mmlab" and ep.value == "mmlab.cli:main" for ep in scripts)


def test_model_package_does_not_import_train_data_or_lab():
    """The data flow is one way: model/ must not depend on training, data or the lab runtime."""
    for path in (ROOT / "src" / "mmlab" / "model").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"from mmlab\.(train|data|lab)|import mmlab\.(train|data|lab)", text), path.name
