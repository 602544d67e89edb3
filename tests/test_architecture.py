"""The layers of the house point one way (docs/architecture.md). An AST walk over src/ finds every import of a
cnnlab module, at the top of a file or inside a function, and checks it against the layer order."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "cnnlab"

# lowest first; a unit may import its own layer's and lower layers' units, never a higher one
LAYERS = [
    {"errors", "fileio"},
    {"data", "models", "scratch"},
    {"runs", "platform"},
    {"analysis", "train", "transfer", "visualize"},
    {"cli", "__main__", "catalog", "lab"},
]
# pairs inside a layer that must not import each other (in this direction)
FORBIDDEN = {("transfer", "train"), ("analysis", "train"), ("analysis", "transfer"), ("analysis", "visualize"),
             ("data", "models"), ("models", "data"), ("scratch", "models"),
             ("runs", "platform"), ("platform", "runs"), ("lab", "cli"), ("catalog", "lab")}
ALLOWED_ROOT = {"__version__"}  # the package root (cnnlab/__init__.py) may be asked for its version only


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(unit: str) -> int:
    return next(i for i, units in enumerate(LAYERS) if unit in units)


def _imports():
    """(file, line, importing unit, imported module, names) for every cnnlab import in src/."""
    for f in sorted(SRC.rglob("*.py")):
        rel = f.relative_to(SRC.parent)
        unit = rel.parts[1].removesuffix(".py") if len(rel.parts) > 1 else ""
        if unit == "__init__":
            continue  # the package root only re-exports, lazily
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cnnlab":
                yield rel, node.lineno, unit, node.module, [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "cnnlab":
                        yield rel, node.lineno, unit, a.name, []


def test_every_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())) and p.name != "__init__.py"}
    assert units <= set().union(*LAYERS), f"give {units - set().union(*LAYERS)} a layer here and in the docs"


def test_imports_point_down_the_layers():
    wrong = []
    for rel, line, unit, module, names in _imports():
        target = _unit(module)
        if target == "":
            if not set(names) <= ALLOWED_ROOT:
                wrong.append(f"{rel}:{line} imports {names} from the package root")
            continue
        if target == unit:
            continue
        if _layer(target) > _layer(unit) or (unit, target) in FORBIDDEN:
            wrong.append(f"{rel}:{line} ({unit}) imports {module} ({target})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_private_name_is_imported_from_another_package():
    wrong = []
    for rel, line, unit, module, names in _imports():
        if _unit(module) != unit:
            wrong += [f"{rel}:{line} imports {n} from {module}" for n in names
                      if n.startswith("_") and n not in ALLOWED_ROOT]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("bad,expected", [("from cnnlab.train import trainer", "analysis"),
                                          ("from cnnlab.cli import main", "models")])
def test_the_check_catches_an_upward_import(tmp_path, bad, expected):
    """The walk itself: a planted upward import is reported."""
    global SRC
    pkg = tmp_path / "cnnlab"
    (pkg / expected).mkdir(parents=True)
    (pkg / expected / "x.py").write_text(bad + "\n")
    old, SRC = SRC, pkg
    try:
        with pytest.raises(AssertionError, match="imports against the layers"):
            test_imports_point_down_the_layers()
    finally:
        SRC = old
