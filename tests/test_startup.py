"""Issue 16: commands that only list or compute numbers start without PyTorch. `cnnlab models` and `cnnlab card`
read the zoo's cached table (src/cnnlab/catalog.json), which must be what the models themselves say;
`cnnlab calc` is arithmetic; `cnnlab summary` runs the model, so it needs torch, but not torchvision.
Timings: benchmarks/startup.py and docs/benchmarks.md."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab import CnnlabError, catalog
from cnnlab.models import FAMILIES, list_models

TABLE = json.loads(catalog.TABLE.read_text(encoding="utf-8"))["models"]
STALE = f"src/cnnlab/catalog.json is stale; regenerate it with `{catalog.REGENERATE}`"


def test_the_table_holds_every_registered_model():
    assert list(TABLE) == list_models(), STALE


@pytest.mark.parametrize("name", list_models())
def test_the_table_entry_is_what_the_model_says(name):
    # the counts, card text, Grad-CAM layer and recipe, rebuilt from the real model (a renamed model, a new
    # figure or recipe makes this fail until the table is regenerated)
    assert TABLE.get(name) == catalog.entry(name), STALE


def test_a_name_the_table_lacks_is_the_registrys(monkeypatch, tmp_path):
    with pytest.raises(CnnlabError, match="unknown model 'vgg61'; did you mean vgg19"):
        catalog.card("vgg61")
    # without its table (an installation that lost the file) the commands are answered from the models
    expected = catalog.models("lenet*"), catalog.card("lenet5")
    monkeypatch.setattr(catalog, "TABLE", tmp_path / "missing.json")
    assert (catalog.models("lenet*"), catalog.card("lenet5")) == expected


def test_every_family_module_is_loaded_by_the_registry():
    # the models package registers the families it lists (importing them registers their models)
    models = Path(catalog.__file__).parent / "models"
    files = {p.stem for p in models.glob("*.py")} - {"__init__", "registry", "cards", "layers"}
    assert set(FAMILIES) == files


def _imported_after(commands: list[list[str]]) -> dict:
    """Run the commands in one fresh interpreter; which heavy modules were imported, and the exit codes."""
    code = ("import json, sys; from cnnlab.cli import main; codes = [main(a) for a in json.loads(sys.argv[1])]; "
            "heavy = ('torch', 'torchvision', 'matplotlib', 'cnnlab.train', 'cnnlab.data', 'cnnlab.visualize'); "
            "print(json.dumps({'codes': codes, 'imported': [m for m in heavy if m in sys.modules]}))")
    src = str(Path(catalog.__file__).parents[1])
    out = subprocess.run([sys.executable, "-c", code, json.dumps(commands)], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": src}, timeout=300)
    return json.loads(out.stdout.splitlines()[-1])


def test_listing_cards_and_arithmetic_do_not_import_torch():
    r = _imported_after([["models"], ["models", "vgg*"], ["card", "lenet5"], ["card", "resnet50"],
                         ["calc", "conv", "--input", "227x227x3", "--filters", "96", "--kernel", "11", "--stride", "4"],
                         ["calc", "pool", "--input", "55x55x96", "--kernel", "3", "--stride", "2"],
                         ["calc", "rf", "conv3*3", "pool2", "--format", "json"], ["models", "zzz"]])
    assert r == {"codes": [0, 0, 0, 0, 0, 0, 0, 2], "imported": []}


@pytest.mark.slow
def test_summary_imports_torch_but_not_torchvision():
    r = _imported_after([["summary", "lenet5"]])
    assert r == {"codes": [0], "imported": ["torch"]}
