"""What an installed (not editable) cnnlab holds: every data file of the package is named by a package-data
pattern in pyproject.toml, so a wheel carries it (MNIST for the main job, the zoo's cached table)."""

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_every_data_file_of_the_package_goes_into_the_wheel():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    src = ROOT / "src"
    data = [p for p in (src / "cnnlab").rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
            and "__pycache__" not in p.parts]
    assert data, "the package has data files (MNIST, the catalog)"
    missing = []
    for p in data:
        covered = False
        for package, globs in patterns.items():
            base = src / Path(*package.split("."))
            if base in p.parents and any(fnmatch.fnmatch(str(p.relative_to(base)), g) for g in globs):
                covered = True
        if not covered:
            missing.append(str(p.relative_to(src)))
    assert not missing, f"add these to [tool.setuptools.package-data] in pyproject.toml: {missing}"
