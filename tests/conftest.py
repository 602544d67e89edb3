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


# Tests run for every model of the zoo (parametrized by `name`) take 1-20 s per case for the larger networks on
# a 2-core CPU (real forwards, ~100M parameters to initialise, hundreds of layers to trace). In the quick loop,
# `pytest -m "not slow"`, they run for these small CIFAR/MNIST models only (each family keeps tests of its own
# in the quick loop); the cases of every other model are marked slow and run with the whole suite.
QUICK_MODELS = frozenset({"lenet5", "lenet5_modern", "nin_cifar", "vgg_cifar", "resnet20", "plain20", "wrn16_4"})


def pytest_collection_modifyitems(config, items):
    from cnnlab import list_models

    slow_models = set(list_models()) - QUICK_MODELS
    for item in items:
        spec = getattr(item, "callspec", None)
        if spec is not None and spec.params.get("name") in slow_models:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
