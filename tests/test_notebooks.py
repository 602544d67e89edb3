"""The example notebooks (examples/*.ipynb) run top to bottom in a real Jupyter kernel, on small settings.

Each notebook's first code cell is tagged "parameters" (papermill's convention) and holds its knobs at the full
settings a user runs; the test inserts a cell after it that sets the small ones, as papermill's
"injected-parameters" cell does, so the notebook as committed is what runs. The kernel is this interpreter
(sys.executable), from a kernel spec written into a temporary folder: a "python3" spec installed elsewhere on the
machine (another Python's) cannot be picked up instead, and a fresh venv with only `pip install -e '.[test]'`
has everything it needs.
"""

import ast
import json
import os
import re
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager  # installed with nbclient
from jupyter_client.manager import KernelManager

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
KERNEL = "cnnlab-test"

# The small settings, by notebook; OUT is added for every notebook that has it (its runs go to tmp_path).
# A name here that the notebook's parameters cell does not define fails the test: a renamed knob would
# otherwise leave the notebook at its full settings (minutes of training) without anyone noticing.
# VAL_SPLIT: each epoch is evaluated on a quarter of the 256 training images instead of the 10,000 test
# images, which took three quarters of each small run's time.
SMALL = {
    "01_build_and_inspect": {},
    "02_train_lenet5": {"EPOCHS": 1, "TRAIN_LIMIT": 256, "VAL_SPLIT": 0.25},
    "03_look_inside": {"EPOCHS": 1, "TRAIN_LIMIT": 256, "VAL_SPLIT": 0.25},
    "04_transfer_learning": {"SOURCE_EPOCHS": 1, "SOURCE_LIMIT": 256, "BUDGET": 256, "EPOCHS": 1, "VAL_SPLIT": 0.25},
}
NEEDS_DATA = {"04_transfer_learning": "fashion_mnist"}


def _parameters_cell(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{len(tagged)} cells tagged 'parameters'; want exactly one"
    return tagged[0]


def _defined(source: str) -> set[str]:
    return {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def test_there_are_notebooks_and_each_has_small_settings():
    assert len(NOTEBOOKS) >= 4
    assert {p.stem for p in NOTEBOOKS} == set(SMALL)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean(path):
    """No outputs or execution counts (diffs stay readable, nothing stale is shown as a result), one parameters
    cell, the first code cell, and it defines every knob the test overrides."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"cells {dirty} of {path.name} hold outputs; clear them before committing"
    i = _parameters_cell(nb)
    assert i == next(j for j, c in enumerate(nb.cells) if c.cell_type == "code"), "parameters must come first"
    unknown = set(SMALL[path.stem]) - _defined(nb.cells[i].source)
    assert not unknown, f"the test sets {sorted(unknown)}, which {path.name}'s parameters cell does not define"


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kernels")
    spec = folder / KERNEL
    spec.mkdir()
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "cnnlab tests", "language": "python"}))
    return KernelSpecManager(kernel_dirs=[str(folder)])


def _missing_data(name: str) -> bool:
    from cnnlab.data import locate, spec

    return not all(f.path is not None for f in locate(spec(name), check=False))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, kernel_specs, monkeypatch):
    data = NEEDS_DATA.get(path.stem)
    if data and _missing_data(data):
        pytest.skip(f"{data} is not in $CNNLAB_DATA_DIR or the cache (`cnnlab data prepare {data}`)")
    nb = nbformat.read(path, as_version=4)
    params = dict(SMALL[path.stem])
    if "OUT" in _defined(nb.cells[_parameters_cell(nb)].source):
        params["OUT"] = str(tmp_path / "runs")
    if params:
        injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
        injected.metadata["tags"] = ["injected-parameters"]
        nb.cells.insert(_parameters_cell(nb) + 1, injected)

    km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=kernel_specs)
    # cwd tmp_path: a relative path a notebook writes lands there, not in the repository
    client = nbclient.NotebookClient(nb, km=km, timeout=600, resources={"metadata": {"path": str(tmp_path)}})
    # the kernel inherits the environment: this checkout's cnnlab, as test_readme runs it
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(EXAMPLES.parent / "src"),
                                                                    os.environ.get("PYTHONPATH")])))
    error = None
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        error = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # the traceback without its terminal colours
    if error is not None:  # failed outside the except: no "during handling of the above exception" chain
        failed = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"
                       and any(o.output_type == "error" for o in c.get("outputs", []))), None)
        # the cell's number as a user sees it in the committed notebook (the injected cell is not there)
        shown = failed if failed is None or failed <= _parameters_cell(nb) or not params else failed - 1
        pytest.fail(f"{path.name}: cell {shown} (from 0, markdown cells counted) failed:\n{error}", pytrace=False)
    code = [c for c in nb.cells if c.cell_type == "code"]
    # every code cell ran, in order (a cell skipped or run twice would show here)
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    # every plot is shown: a library call that switches matplotlib's backend (matplotlib.use("Agg") in the
    # trainer did) leaves the notebook's later plt.show() with nothing to show, and no error
    blank = [i for i, c in enumerate(code) if "plt.show()" in c.source
             and not any("image/png" in o.get("data", {}) for o in c.outputs)]
    assert not blank, f"{path.name}: code cells {blank} call plt.show() but show no picture"
    # text stays text: rich, asked for a string (Summary.table), displayed its own HTML (a <pre> block) in the
    # notebook instead and returned the string without its table. A Summary shown as a cell's value is an HTML
    # table on purpose (its _repr_html_), and it must hold the table.
    rich_html = [i for i, c in enumerate(code)
                 if any("<pre" in "".join(o.get("data", {}).get("text/html", "")) for o in c.outputs)]
    assert not rich_html, f"{path.name}: code cells {rich_html} display rich's HTML instead of returning text"
    for c in code:
        for o in c.outputs:
            shown = "".join(o.get("data", {}).get("text/html", ""))
            if "Summary" in o.get("data", {}).get("text/plain", "") or shown:
                assert "<table>" in shown and "</tbody>" in shown, f"{path.name}: an HTML output without its table"
