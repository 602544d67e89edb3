"""The benchmark scripts that compare cnnlab with its peers: the akamaster CIFAR-10 peer is the network and the
data it claims to be, and the GPU check runs end to end (on the CPU, at tiny sizes) into a complete report."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SHARED = Path(os.environ.get("CNNLAB_DATA_DIR", "../shared/data"))
JPEG_TAR = SHARED / "cifar-10" / "cifar-10-jpg.tar.gz"
needs_jpeg = pytest.mark.skipif(not JPEG_TAR.exists(), reason="no local CIFAR-10 JPEG copy")


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def akamaster():
    return _module(BENCH / "peers" / "akamaster_cifar.py")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
            "CNNLAB_DATA_DIR": str(SHARED.resolve())}


def test_akamaster_resnet20_has_the_papers_parameter_count(akamaster):
    model = akamaster.resnet20()
    n = sum(p.numel() for p in model.parameters())
    assert n == 269_722 and round(n / 1e6, 2) == 0.27  # He et al. Table 6: 0.27M
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 19 and sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 1  # 6n + 2, n = 3
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_akamaster_option_a_shortcut_is_subsampling_padded_with_zero_channels(akamaster):
    block = akamaster.BasicBlock(16, 32, stride=2)
    x = torch.randn(2, 16, 8, 8)
    zeros = torch.zeros(2, 8, 4, 4)
    assert torch.equal(block.shortcut(x), torch.cat([zeros, x[:, :, ::2, ::2], zeros], 1))
    assert not any(p.numel() for p in block.shortcut.parameters())  # option A adds no parameters
    same = akamaster.BasicBlock(16, 16, stride=1)
    assert torch.equal(same.shortcut(x), x)
    assert block(x).shape == (2, 32, 4, 4)


@needs_jpeg
def test_akamaster_jpeg_copy_gives_cnnlabs_pixels(akamaster):
    from cnnlab.data.memory import load

    ours = load("cifar10_jpeg", "test", data_dir=SHARED)
    peer = akamaster.JpegTarCIFAR10(JPEG_TAR, train=False)
    assert peer.data.shape == (10_000, 32, 32, 3) and peer.data.dtype == "uint8"
    for i in (0, 999, 1000, 4321, 9999):
        assert peer.classes[peer.targets[i]] == ours.classes[int(ours.labels[i])]
        assert torch.equal(torch.from_numpy(peer.data[i]), ours.images[i].permute(1, 2, 0))
    # what __getitem__ hands the transforms: a PIL image of those pixels, as torchvision's CIFAR10 does
    img, target = peer[4321]
    assert img.mode == "RGB" and target == peer.targets[4321]
    assert torch.equal(torch.from_numpy(np.array(img)), ours.images[4321].permute(1, 2, 0))


def test_gpu_check_without_a_gpu_says_so_and_exits_2(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    r = subprocess.run([sys.executable, BENCH / "gpu_check.py", "--out", tmp_path], capture_output=True, text=True,
                       env=_env(), timeout=120)
    assert r.returncode == 2 and "no CUDA GPU" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # no report of nothing


def test_gpu_check_keeps_every_part_when_one_fails_or_runs_out_of_time(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    gpu_check = _module(BENCH / "gpu_check.py")
    from side_by_side import outcome, run

    conditions = {"processor": "x86_64", "torch": "2.x", "python": "3.11", "cpu_count": 2}
    check = gpu_check.Check(tmp_path, 60, conditions, {"smoke": True, "budget": 60})

    def broken(limit):
        raise RuntimeError("a broken part")

    def stuck(limit):
        return outcome(run([sys.executable, "-c", "import sys, time; print('still working', file=sys.stderr, "
                                                  "flush=True); time.sleep(60)"], 1))

    check.part("a", "raises", 30, broken)
    check.part("b", "hangs", 30, stuck)
    check.part("c", "passes", 30, lambda limit: {"status": "ok", "seconds": 0.5, "result": "7 img/s"})
    report = json.loads((tmp_path / "report.json").read_text())
    parts = report["parts"]
    assert list(parts) == ["a", "b", "c"] and report["failed"] == ["a", "b"] and parts["c"]["status"] == "ok"
    assert parts["a"]["status"] == "failed" and "a broken part" in parts["a"]["error"]
    assert "RuntimeError" in parts["a"]["stderr_tail"]
    assert parts["b"]["status"] == "timed out" and parts["b"]["stderr_tail"] == "still working"
    assert 1 <= parts["b"]["seconds"] < 20  # killed at its limit, not left to sleep
    md = (tmp_path / "report.md").read_text()
    assert "### a: failed" in md and "### b: timed out" in md and "still working" in md and "| c | passes |" in md

    spent = gpu_check.Check(tmp_path / "spent", 0, conditions, {"smoke": True, "budget": 0})
    assert spent.part("d", "too late", 30, broken)["status"] == "skipped"


@pytest.mark.slow
@needs_jpeg
def test_gpu_check_smoke_on_cpu_reports_every_part(tmp_path):
    # one CIFAR model: vgg_cifar runs the same functions with another name (each process costs seconds here)
    r = subprocess.run([sys.executable, BENCH / "gpu_check.py", "--device", "cpu", "--smoke", "--models", "resnet20",
                        "--out", tmp_path], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    parts = report["parts"]
    assert list(parts) == ["lenet5_cnnlab", "lenet5_lecture_peer", "resnet20_cnnlab_auto", "resnet20_cnnlab_fp32",
                           "resnet20_akamaster_peer"]
    assert report["failed"] == [] and all(p["status"] == "ok" and p["seconds"] > 0 for p in parts.values())
    for key in ("lenet5_cnnlab", "lenet5_lecture_peer"):
        assert 0 < parts[key]["final_top1"] <= 100 and parts[key]["epochs"] == 1
    for key in ("resnet20_cnnlab_auto", "resnet20_cnnlab_fp32", "resnet20_akamaster_peer"):
        assert parts[key]["images_per_s"] > 0 and parts[key]["steps"] == 3
    assert parts["resnet20_cnnlab_fp32"]["precision"] == "fp32"
    assert parts["resnet20_akamaster_peer"]["decode_seconds"] > 0
    assert {"resnet20: cnnlab (auto) / peer, images/s", "resnet20: cnnlab (fp32) / peer, images/s"} <= set(
        report["ratios"]) and all(v > 0 for v in report["ratios"].values())
    md = (tmp_path / "report.md").read_text()
    assert all(f"| {key} |" in md for key in parts) and "## Ratios" in md and "smoke run" in md
