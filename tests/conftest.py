import os
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden"


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/* from the current output instead of comparing")


@pytest.fixture
def golden(request):
    """golden(name, text): compare text with tests/golden/<name>, or rewrite it with --update-golden."""
    update = request.config.getoption("--update-golden")

    def check(name: str, text: str):
        path = GOLDEN / name
        if update or not path.exists() and os.environ.get("CI") != "true":
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
        assert path.exists(), f"golden file {path} is missing; run pytest --update-golden"
        assert text == path.read_text(), f"output differs from {path}; if intended, run pytest --update-golden"

    return check


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
