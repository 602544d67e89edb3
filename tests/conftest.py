import os
from pathlib import Path

# The suite runs on pytest-xdist workers (pyproject's addopts: -n auto): they share the cores, so each takes its
# share of threads, it and the processes its tests start (the CLI, torchrun) alike. Two workers of two OpenMP
# threads each spin against each other on a 2-core machine (a 6-epoch run took 17x longer), and a resumed run in
# a subprocess must use the thread count of the in-process run it is compared with bit for bit.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["OMP_NUM_THREADS"] = str(_share)  # before torch is imported, and inherited by subprocesses

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(_share)  # in case torch was imported before this file

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


@pytest.fixture
def gradcam_toy():
    """A network whose Grad-CAM is known by hand: two channels copied through a 1x1 convolution, averaged, and
    read by an identity classifier. Class c is the mean of channel c, so d score / d A^c = 1 / (H W), alpha_c =
    1 / (H W), and Grad-CAM of class c at layer "0" is channel c / (H W), at the input's own resolution."""
    from torch import nn

    conv = nn.Conv2d(2, 2, 1, bias=False)
    fc = nn.Linear(2, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        fc.weight.copy_(torch.eye(2))
        fc.bias.zero_()
    return nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)
