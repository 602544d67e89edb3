"""Static checks with ruff (pyflakes rules, statement errors, line length; pyproject.toml [tool.ruff]): an
undefined name in an error path, for one, is a crash that only the rare failure would otherwise find."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    # a failure, not a skip: ruff is in the test extra, so a missing ruff means the checks silently stopped
    assert Path(ruff).exists(), "ruff is not installed; pip install -e '.[test]' installs it (pyproject.toml)"
    run = subprocess.run([ruff, "check", "--no-cache", "src", "tests", "benchmarks"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
