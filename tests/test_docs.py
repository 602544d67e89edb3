"""The documentation site (mkdocs.yml, docs/): the guides and an API reference generated from the docstrings.

`mkdocs build --strict` turns every warning into a failure: a page or anchor a link names that does not exist,
a `::: module` that cannot be found, a docstring that documents a parameter the function does not have.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# Per API page, objects it must show: a page that renders empty (a filter or option that hides every member,
# a module moved without the page following) builds without a warning, so the build alone would not notice.
SHOWN = {
    "cnnlab": ["cnnlab.models.registry.create_model", "cnnlab.analysis.summary.summary", "cnnlab.errors.CnnlabError"],
    "models": ["cnnlab.models.registry.ModelCard", "cnnlab.models.lenet"],
    "analysis": ["cnnlab.analysis.conv_arith.conv", "cnnlab.analysis.summary.Summary",
                 "cnnlab.analysis.evaluate.evaluate"],
    "data": ["cnnlab.data.view.DataView", "cnnlab.data.view.open_data"],
    "train": ["cnnlab.train.config.TrainConfig", "cnnlab.train.config.RunResult", "cnnlab.train.trainer.train"],
    "transfer": ["cnnlab.transfer.weights.load_pretrained", "cnnlab.transfer.weights.freeze_backbone"],
    "visualize": ["cnnlab.visualize.attribution.gradcam", "cnnlab.visualize.filters.filters"],
    "scratch": ["cnnlab.scratch.layers.Conv2d"],
    "runs": ["cnnlab.runs.open_run", "cnnlab.runs.RunInfo"],
    "platform": ["cnnlab.platform.Platform"],
    "errors-fileio": ["cnnlab.errors.CnnlabError", "cnnlab.fileio.atomic_open"],
    "lab": ["cnnlab.lab.app.create_app", "cnnlab.lab.sources.Sources"],
}


def _nav_files(nav) -> list[str]:
    out = []
    for entry in nav:
        for value in (entry.values() if isinstance(entry, dict) else [entry]):
            out += _nav_files(value) if isinstance(value, list) else [value]
    return out


def test_every_page_is_in_the_nav_and_every_package_has_a_reference_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_files(config["nav"])
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages, "every page in docs/ is in mkdocs.yml's nav, and the nav names no other"
    assert {f"api/{name}.md" for name in SHOWN} == {p for p in pages if p.startswith("api/")}
    packages = {p.name for p in (ROOT / "src" / "cnnlab").iterdir() if (p / "__init__.py").exists()}
    documented = {m for page in DOCS.glob("api/*.md") for m in re.findall(r"^::: cnnlab\.(\w+)", page.read_text(),
                                                                             re.M)}
    assert packages <= documented, f"packages without an API page: {sorted(packages - documented)}"


def test_the_readme_links_to_files_that_exist():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    local = [link for link in links if not re.match(r"\w+://", link)]
    assert any(link.startswith("docs/") for link in local)
    assert [link for link in local if not (ROOT / link).exists()] == []


@pytest.mark.slow
def test_the_docs_build_with_warnings_as_errors(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(site)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    for page, names in SHOWN.items():
        html = (site / "api" / page / "index.html").read_text()
        missing = [n for n in names if f'id="{n}"' not in html]
        assert not missing, f"api/{page}.md does not show {missing}"
    # the guides are pages too, and the README's links to them (docs/x.md) have a page to land on
    for guide in ("architecture", "benchmarks", "distributed", "transfer"):
        assert (site / guide / "index.html").exists()
