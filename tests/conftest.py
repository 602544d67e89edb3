from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden"


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/* from the current output instead of comparing")


@pytest.fixture
def golden(request):
    """golden(name, text): compare text with tests/golden/<name>, or rewrite it with --update-golden.

    Only --update-golden writes: a missing golden file fails, so a test whose file was deleted, renamed or never
    committed cannot pass by comparing its output with itself."""
    update = request.config.getoption("--update-golden")

    def check(name: str, text: str):
        path = GOLDEN / name
        if update:
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
        assert path.exists(), f"golden file {path} is missing; run pytest --update-golden to write it"
        assert text == path.read_text(), f"output differs from {path}; if intended, run pytest --update-golden"

    return check


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
