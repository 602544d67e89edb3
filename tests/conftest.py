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


# ---------------------------------------------------------------------------------------- the lab (cnnlab serve)
# tests/test_lab_*.py: a real uvicorn on a free port, driven by Playwright with Debian's Chromium (found on PATH or
# at $CNNLAB_CHROMIUM; never downloaded). Without a Chromium the browser tests skip, except in CI (CI=true), where
# a skipped browser test is a failure: .ci/run installs the chromium package when it is missing.
SCREENSHOTS = Path(__file__).parent.parent / "build" / "screenshots"


def chromium_path() -> str | None:
    import shutil

    return os.environ.get("CNNLAB_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.fixture(scope="session")
def lab_runs(tmp_path_factory):
    """A --runs folder with one trained LeNet-5 (1 epoch of MNIST, ~98% on the test set), trained once per
    session whichever xdist worker asks first (the others wait on a file lock, then share the folder)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent / "lab-runs"
    root.mkdir(exist_ok=True)
    run = root / "lenet5-mnist"
    with FileLock(str(root) + ".lock"):
        if not (run / "last.pt").is_file():
            import cnnlab

            cnnlab.train("lenet5", epochs=1, out=str(run), quiet=True)
    return root


class LabServer:
    """The lab on uvicorn in a thread, on a free port of 127.0.0.1."""

    def __init__(self, runs):
        import socket
        import threading

        import uvicorn

        from cnnlab.lab import create_app

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(runs, "127.0.0.1", self.port)
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        import time

        t = time.time()
        while not self.server.started:
            assert time.time() - t < 30, "the lab did not start"
            time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def lab_server(lab_runs):
    server = LabServer(lab_runs)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("no Chromium in CI: .ci/run installs Debian's chromium package; a skipped browser test in "
                        "CI is a failure")
        pytest.skip("no Chromium here: `apt-get install chromium` (Debian/Ubuntu) or set CNNLAB_CHROMIUM to a "
                    "Chromium or Chrome binary; Playwright's own download is not used")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser, lab_server, request):
    """A fresh browser page on the lab. Every request that would leave 127.0.0.1 is blocked and fails the test;
    so does any console error or uncaught exception. ``page.shot(name)`` saves a screenshot to
    build/screenshots/ (the test artefacts; a few of them are in the README)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    outside, errors = [], []

    def route(r):
        url = r.request.url
        if url.startswith(lab_server.url + "/") or url.startswith("data:") or url.startswith("blob:"):
            r.continue_()
        else:
            outside.append(url)
            r.abort()

    context.route("**/*", route)
    pg = context.new_page()
    http_errors = []  # a 4xx the page asked for shows as a console error: expected where a test says so

    def console(m):
        if m.type == "error":
            (http_errors if "the server responded with a status of 4" in m.text else errors).append(m.text)

    pg.on("console", console)
    pg.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    pg.lab = lab_server.url
    pg.errors, pg.http_errors, pg.expect_http_errors = errors, http_errors, False

    def shot(name: str):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    pg.shot = shot
    yield pg
    context.close()
    assert not outside, f"requests left 127.0.0.1: {outside}"
    assert not errors, f"console errors: {errors}"
    assert pg.expect_http_errors or not http_errors, f"requests the lab refused: {http_errors}"
