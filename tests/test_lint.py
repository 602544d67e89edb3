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


def _cnnlab_imports():
    """(package of the importing file, imported module, names) for every ``from cnnlab... import`` in src."""
    import ast

    src = ROOT / "src" / "cnnlab"
    for path in sorted(src.rglob("*.py")):
        package = path.relative_to(src).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cnnlab."):
                yield package, node.module, [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("cnnlab."):
                        yield package, a.name, []


def test_models_import_nothing_above_them():
    # STYLE.md: dependencies point one way; analysis inspects models, models never import analysis (or train,
    # data, visualize, transfer, runs, lab, cli)
    allowed = ("cnnlab.models", "cnnlab.errors", "cnnlab.fileio")
    wrong = [module for package, module, _ in _cnnlab_imports()
             if package == "models" and not module.startswith(allowed)]
    assert not wrong, wrong


def test_no_package_imports_another_packages_private_names():
    wrong = [(package, module, name) for package, module, names in _cnnlab_imports() for name in names
             if name.startswith("_") and module.split(".")[1] != package]
    assert not wrong, wrong
