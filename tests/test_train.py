"""The trainer on real MNIST: accuracy, run folder, exact resume after kill -9, atomic checkpoints, errors;
evaluation metrics and test-time augmentation against hand-computed values."""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab import CnnlabError
from cnnlab.cli import main
from cnnlab.train import TrainConfig, train
from cnnlab.analysis.evaluate import EvalReport, probabilities, ten_crops
from cnnlab.runs import load_checkpoint, save_checkpoint

# Where the trainer's malloc tuning lives, "module:function" (imported by name in fresh processes below); if
# keep_freed_memory moves to another module, this is the one line to change.
KEEP_FREED_MEMORY = "cnnlab.platform:keep_freed_memory"

FAST = dict(model="lenet5_modern", epochs=2, batch_size=256, lr=0.05, quiet=True, deterministic=True, seed=3)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """Two uninterrupted epochs of lenet5_modern on real MNIST, deterministic."""
    out = tmp_path_factory.mktemp("ref")
    result = train(TrainConfig(out=str(out), **FAST))
    return out, result


@pytest.mark.slow
def test_short_real_mnist_run_reaches_98_percent(reference_run):
    _, result = reference_run
    assert result.best_top1 >= 98.0  # two epochs of the lecture's LeNet-5 on real MNIST


@pytest.mark.slow
def test_run_folder_holds_everything(reference_run):
    out, _ = reference_run
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.jsonl", "curves.png", "last.pt", "best.pt",
                                               "summary.md"}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["recipe"] == "lenet5_modern_mnist" and cfg["recipe_settings"]["batch_size"] == 256  # flag over recipe
    assert cfg["recipe_settings"]["optimizer"] == "nesterov" and cfg["eval_split"] == "test"
    assert cfg["versions"]["torch"] == torch.__version__ and cfg["hardware"]["cpu_count"]
    assert cfg["channels_last"] is True and cfg["precision"] == "fp32"  # the CPU default
    # by hand: conv1 28*28*6*25 + conv2 10*10*16*150 + fc 400*120 + 120*84 + 84*10
    assert cfg["macs_per_image"] == 117_600 + 240_000 + 48_000 + 10_080 + 840
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [l for l in lines if l["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2] and all(e["eval_split"] == "test" for e in epochs)
    assert any(l["kind"] == "step" for l in lines)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "lenet5_modern on mnist" in (out / "summary.md").read_text()
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 2 * (60_000 // 256)
    assert {"info", "model", "optimizer", "rng", "schedule", "history"} <= set(state)


def _weights(run: Path) -> dict:
    return load_checkpoint(run)["model"]


@pytest.mark.slow
def test_resume_after_a_crash_equals_the_uninterrupted_run(reference_run, tmp_path, monkeypatch):
    ref, _ = reference_run
    import cnnlab.train.rundir as rundir

    save = rundir.RunFolder.save

    def crash(*a, **k):  # the process dies right after the first epoch's checkpoint, before its metrics line
        save(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(rundir.RunFolder, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(tmp_path), **FAST))
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["epoch"] == 1
    train(TrainConfig(model="lenet5_modern", resume=str(tmp_path), quiet=True))
    a, b = _weights(ref), _weights(tmp_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    epochs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if json.loads(l)["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]  # nothing lost, nothing duplicated


@pytest.mark.slow
def test_kill_minus_9_mid_epoch_then_resume_equals_the_uninterrupted_run(reference_run, tmp_path):
    ref, _ = reference_run
    cmd = [sys.executable, "-m", "cnnlab", "train", "lenet5_modern", "--epochs", "2", "--batch-size", "256",
           "--lr", "0.05", "--quiet", "--deterministic", "--seed", "3", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # generous: a loaded machine may be slow
    while time.time() < deadline and proc.poll() is None and not _in_epoch_2(tmp_path / "metrics.jsonl"):
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before it was seen in epoch 2"
    assert _in_epoch_2(tmp_path / "metrics.jsonl"), "no step of epoch 2 was logged within 600 s"
    proc.send_signal(signal.SIGKILL)  # epoch 2 has logged a step: the kill lands mid-epoch
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(tmp_path)["epoch"] == 1
    assert main(["train", "lenet5_modern", "--resume", str(tmp_path), "--quiet"]) == 0
    a, b = _weights(ref), _weights(tmp_path)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _in_epoch_2(metrics: Path) -> bool:
    """Whether the run has logged a training step of its second epoch (a step record: written mid-epoch)."""
    if not metrics.exists():
        return False
    lines = [l for l in metrics.read_text().splitlines() if l.endswith("}")]  # a line being written is skipped
    return any(r["kind"] == "step" and r["epoch"] == 2 for r in map(json.loads, lines))


def test_an_interrupted_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    from cnnlab.runs import RunInfo

    path, info = tmp_path / "last.pt", RunInfo("lenet5", tuple("0123456789"), 1, (1, 32, 32), "mnist")
    save_checkpoint(path, info, {"w": torch.ones(3)}, {"epoch": 1})
    before = path.read_bytes()

    def dying_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the process is interrupted mid-write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, info, {"w": torch.zeros(3)}, {"epoch": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before and load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


@pytest.mark.slow
def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import cnnlab.train.trainer as trainer

    real, calls = trainer.classification_loss, []

    def diverging(*args):  # the loss turns to nan in the second epoch
        loss, logits = real(*args)
        calls.append(1)
        return (loss * float("nan") if len(calls) > 250 else loss), logits

    monkeypatch.setattr(trainer, "classification_loss", diverging)
    with pytest.raises(CnnlabError, match="the loss became nan at epoch 2.*last good checkpoint is kept"):
        train(TrainConfig(out=str(tmp_path), **FAST))
    assert load_checkpoint(tmp_path)["epoch"] == 1
    assert torch.isfinite(torch.cat([v.flatten().float() for v in load_checkpoint(tmp_path)["model"].values()])).all()


@pytest.mark.slow
def test_checkpoint_of_another_architecture_is_refused(reference_run, tmp_path):
    ref, _ = reference_run
    state = load_checkpoint(ref)
    training = {k: v for k, v in state.items() if k not in ("format", "info", "model")}
    save_checkpoint(tmp_path / "x.pt", dataclasses.replace(state["info"], model="lenet5"), state["model"], training)
    assert main(["eval", str(tmp_path / "x.pt")]) == 2


class _Payload:
    """Unpickling this calls open(path, "w"): a file that appears means code from the checkpoint ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.slow
def test_unreadable_checkpoints_are_explained_and_never_run_code(reference_run, tmp_path, capsys):
    ref, _ = reference_run
    good = (ref / "last.pt").read_bytes()
    marker = tmp_path / "code-ran"
    torch.save({"format": "cnnlab-checkpoint-1", "model": _Payload(str(marker))}, tmp_path / "evil.pt")
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "config.json").write_text((ref / "config.json").read_text())
    cases = {"evil.pt": "it holds a Python object (io.open) beyond tensors and plain containers",
             "cut.pt": "it is damaged or cut short", "empty.pt": "it is empty",
             "config.json": "it is not a PyTorch file (torch.save writes a zip archive"}
    for name, why in cases.items():
        assert main(["eval", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / name} is not a readable checkpoint: {why}" in err, err
        assert "Traceback" not in err and "weights_only` set to `False`" not in err  # no advice to load unsafely
    assert not marker.exists()
    assert main(["transfer", "--from", str(tmp_path / "evil.pt"), "--model", "lenet5_modern", "--data", "mnist",
                 "--out", str(tmp_path / "t")]) == 2
    assert "is not a readable weights file: it holds a Python object" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.slow
def test_eval_and_predict_commands(reference_run, capsys, tmp_path):
    ref, result = reference_run
    assert main(["eval", str(ref), "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["top1"] == pytest.approx(result.final["eval_top1"]) and d["images"] == 10_000
    assert sum(sum(r) for r in d["confusion"]) == 10_000 and len(d["per_class"]) == 10
    assert main(["eval", str(ref), "--tta", "flip", "--ensemble", str(ref / "best.pt")]) == 0
    out = capsys.readouterr().out
    assert "TTA flip" in out and "ensemble of 2" in out and (ref / "confusion-test-flip.png").exists()
    assert main(["eval", str(ref), "--tta", "crops10", "--format", "json"]) == 0
    crops = json.loads(capsys.readouterr().out)
    # half the ten views are mirror images, which cost accuracy on digits (as flip averaging does); a wrong
    # crop geometry (crops from the padding, misaligned views) would cost far more
    assert crops["tta"] == "crops10" and d["top1"] - 6 < crops["top1"] <= d["top1"]
    from torchvision.io import write_png
    from cnnlab.data import load
    img = load("mnist", "test", data_dir="/nonexistent").images[0]  # a 7
    write_png(img, str(tmp_path / "seven.png"))
    assert main(["predict", str(ref), str(tmp_path / "seven.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[-1] == "7" and len(lines) == 6


class Toy(nn.Module):
    """Logits [s, -s] with s the mean of the left half minus the right half of the image."""

    def forward(self, x):
        s = x[..., : x.shape[-1] // 2].mean((1, 2, 3)) - x[..., x.shape[-1] // 2:].mean((1, 2, 3))
        return torch.stack([s, -s], 1)


def test_flip_tta_averages_the_softmax_of_both_views():
    x = torch.zeros(1, 1, 2, 2)
    x[..., 0] = 1.0  # left column bright: s = 1, flipped s = -1
    p = probabilities([Toy()], x, "flip", 2)
    e = torch.tensor(1.0).exp()
    first = torch.tensor([e * e, 1.0]) / (e * e + 1)  # softmax([1, -1])
    torch.testing.assert_close(p[0], (first + first.flip(0)) / 2)
    torch.testing.assert_close(probabilities([Toy(), Toy()], x, None, 2), probabilities([Toy()], x, None, 2))


def test_ten_crops_are_corners_centre_and_mirrors():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    crops = ten_crops(torch.nn.functional.pad(x, (1, 1, 1, 1)), 4)
    assert len(crops) == 10 and all(c.shape == x.shape for c in crops)
    assert torch.equal(crops[4], x)  # the centre crop of the padded image is the image
    assert crops[0][0, 0, 0, 0] == 0 and crops[0][0, 0, 1, 1] == 0  # top-left: padding at the corner
    assert crops[3][0, 0, -1, -1] == 0 and crops[3][0, 0, 0, 0] == 5  # bottom-right
    assert torch.equal(crops[9], crops[4].flip(3))


def test_report_metrics_from_a_hand_made_confusion_matrix():
    conf = torch.tensor([[8, 2, 0], [1, 3, 1], [0, 0, 5]])
    r = EvalReport(["a", "b", "c"], conf, top5_correct=20, split="test", tta=None, models=1)
    assert r.n == 20 and r.top1 == pytest.approx(80.0) and r.top5 == pytest.approx(100.0)
    assert r.per_class == pytest.approx([80.0, 60.0, 100.0])
    assert "top-1 80.00%" in r.text()


@pytest.mark.parametrize("argv,message", [
    (["train", "lenet7"], "unknown model 'lenet7'"),
    (["train", "lenet5", "--data", "mnsit"], "unknown dataset 'mnsit'"),
    (["train", "lenet5", "--recipe", "nope"], "unknown recipe 'nope'"),
    (["train", "lenet5", "--lr", "-1"], "must be positive"),
    (["train", "alexnet", "--epochs", "1"], "pass --data folder:PATH"),
    (["train", "lenet5", "--data", "fashion_mnist", "--data-dir", "/nonexistent"], "missing"),
    (["eval", "/nonexistent/run"], "no checkpoint at"),
    (["predict", "/nonexistent/run", "x.png"], "no checkpoint at"),
    (["train", "lenet5", "--model-option", "head"], "is not KEY=VALUE"),
    (["train", "lenet5", "--model-option", "depth=3"], "has no option 'depth'; it accepts: head"),
    (["train", "resnet20", "--model-option", "drop_path_rate=lots"], "is not a float"),
    (["train", "lenet5", "--model-option", "head=softmax"], "head must be 'rbf'"),
])
def test_training_mistakes_exit_2(capsys, argv, message, tmp_path):
    code = main(argv + ["--out", str(tmp_path)] if argv[0] == "train" else argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.slow
def test_model_options_reach_the_model_the_run_folder_and_eval(tmp_path, capsys):
    """--model-option head=linear: the trained network has the linear head (850 more parameters), the run
    records the option, and eval rebuilds the same network from the checkpoint."""
    import json

    code = main(["train", "lenet5", "--model-option", "head=linear", "--epochs", "1", "--train-limit", "600",
                 "--out", str(tmp_path), "--quiet"])
    assert code == 0
    assert json.loads((tmp_path / "config.json").read_text())["model_options"] == {"head": "linear"}
    state = load_checkpoint(tmp_path)
    assert state["info"].model_options == {"head": "linear"} and "output.weight" in state["model"]
    assert sum(v.numel() for k, v in state["model"].items() if k != "output.prototypes") == 60_850
    capsys.readouterr()
    assert main(["eval", str(tmp_path), "--format", "json"]) == 0
    # eval rebuilt the linear-head network (the RBF one would not load these weights) and scores what the run did
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(state["history"][-1]["eval_top1"])


def test_precision_and_layout_defaults(monkeypatch):
    from cnnlab import platform

    cpu, cuda = torch.device("cpu"), torch.device("cuda")

    def never():
        raise AssertionError("probed the CPU's bf16 speed though the choice did not depend on it")

    monkeypatch.setattr(platform, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(platform, "cpu_bf16_speedup", never)
    assert platform.resolve_precision("auto", cpu, 416_520) == "fp32"  # LeNet-5: too small to gain
    assert platform.resolve_precision("bf16", cpu, 416_520) == "bf16"
    for speedup, expected in ((0.67, "fp32"), (1.2, "fp32"), (1.8, "bf16")):  # CPUs measured so far: 0.67, 1.8
        monkeypatch.setattr(platform, "cpu_bf16_speedup", lambda s=speedup: s)
        assert platform.resolve_precision("auto", cpu, 152_769_536) == expected  # vgg_cifar's multiply-adds
    monkeypatch.setattr(platform, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(platform, "cpu_bf16_speedup", never)
    assert platform.resolve_precision("auto", cpu, 152_769_536) == "bf16"  # AMX tiles: no need to measure
    with pytest.raises(CnnlabError, match="fp16 needs a GPU"):
        platform.resolve_precision("fp16", cpu, 1)
    # channels-last: on a CPU always (oneDNN is faster on it in fp32 too); on a GPU with 16-bit floats
    assert platform.resolve_channels_last(None, "fp32", cpu) is True
    assert platform.resolve_channels_last(None, "fp32", cuda) is False
    assert platform.resolve_channels_last(None, "bf16", cuda) is True
    assert platform.resolve_channels_last(False, "fp32", cpu) is False  # --no-channels-last wins


def test_the_bf16_probe_runs_once_per_machine_and_survives_a_bad_cache(monkeypatch, tmp_path):
    from cnnlab import platform

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(platform, "cpu_has_bf16", lambda: True)
    calls = []
    monkeypatch.setattr(platform, "_measure_bf16_speedup", lambda: calls.append(1) or 1.8)
    assert platform.cpu_bf16_speedup() == 1.8 and platform.cpu_bf16_speedup() == 1.8 and len(calls) == 1
    cached = json.loads((tmp_path / "cnnlab" / "cpu_bf16.json").read_text())
    assert list(cached.values()) == [1.8] and torch.__version__ in next(iter(cached))
    (tmp_path / "cnnlab" / "cpu_bf16.json").write_text("{not json")  # torn or edited by hand: measure again
    assert platform.cpu_bf16_speedup() == 1.8 and len(calls) == 2
    monkeypatch.setattr(platform, "cpu_has_bf16", lambda: False)
    assert platform.cpu_bf16_speedup() == 0.0


@pytest.mark.slow
def test_the_bf16_probe_measures_a_real_ratio():
    from cnnlab import platform

    torch.manual_seed(123)
    state = torch.get_rng_state()
    ratio = platform._measure_bf16_speedup(runs=2)
    assert 0.05 < ratio < 20  # a ratio of two timings of the same convolution, not a constant or a crash
    # measured during the first training run on a machine: it must not shift that run's random draws
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.slow
def test_training_keeps_freed_memory_instead_of_page_faulting():
    """After keep_freed_memory() (the trainer calls it), steps reuse the heap. A LeNet-5 step at batch 128
    frees and reallocates activations of up to 2.4 MB (600 pages each); with glibc's defaults 40 steps
    typically take 10,000-30,000 minor page faults (now and then glibc's own adaptive threshold avoids them,
    so the default is not asserted). Kept memory: under 3,000 (measured 0-1,200). Counted, not timed."""
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's mallopt")
    module, function = KEEP_FREED_MEMORY.split(":")
    code = f"""
import resource, sys, torch
from cnnlab import create_model
from {module} import {function} as keep_freed_memory
assert keep_freed_memory() and keep_freed_memory()
m = create_model("lenet5")
x = torch.randn(128, 1, 32, 32)
def step():
    m(x).sum().backward()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    faults = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert faults < 3_000, faults


# Run in a fresh process: does glibc keep 384 MiB freed in 24 MiB blocks? With keep_freed_memory's settings the
# blocks come from the heap (under the 32 MiB mmap threshold) and stay there after free (under the 1 GiB trim
# threshold). With glibc's defaults, or the thresholds glibc adapts by itself (at most 32 MiB and 64 MiB), they
# are fresh mmaps or the heap is trimmed, so the probe reads false: it sees the settings, not a flag.
_MALLOC_PROBE = """
import ctypes, json, os, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def keeps_freed_memory():
    before = libc.mallinfo2()
    blocks = [libc.malloc(24 << 20) for _ in range(16)]
    during = libc.mallinfo2()
    for b in reversed(blocks):
        libc.free(b)
    after = libc.mallinfo2()
    return during.hblks == before.hblks and after.arena >= during.arena
"""


def _malloc_probe(body: str, tmp_path: Path) -> dict:
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's mallopt")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's defaults
    run = subprocess.run([sys.executable, "-c", _MALLOC_PROBE + body], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=600)
    if "mallinfo2" in run.stderr and "undefined symbol" in run.stderr:
        pytest.skip("glibc older than 2.33 (no mallinfo2)")
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.splitlines()[-1])


@pytest.mark.slow
def test_keep_freed_memory_sets_mallocs_thresholds(tmp_path):
    module, function = KEEP_FREED_MEMORY.split(":")
    got = _malloc_probe(f"""
import torch
from {module} import {function} as keep_freed_memory
default = keeps_freed_memory()
applied = keep_freed_memory()
print(json.dumps({{"default": default, "applied": applied, "again": keep_freed_memory(),
                  "tuned": keeps_freed_memory()}}))
""", tmp_path)
    assert got == {"default": False, "applied": True, "again": True, "tuned": True}


@pytest.mark.slow
def test_training_applies_keep_freed_memory(tmp_path):
    """A short real run in a fresh process leaves malloc tuned: the trainer called keep_freed_memory."""
    got = _malloc_probe("""
from cnnlab.train import TrainConfig, train
train(TrainConfig(model="lenet5_modern", epochs=1, batch_size=256, train_limit=512, quiet=True, out="run"))
print(json.dumps({"tuned": keeps_freed_memory()}))
""", tmp_path)
    assert got == {"tuned": True}


def test_the_loss_temperature_scales_the_logits_the_losses_see():
    from cnnlab.train.recipes import get_recipe
    from cnnlab.data.view import DataView, OpenedData
    from cnnlab.platform import Platform
    from cnnlab.train.trainer import classification_loss as _loss
    from cnnlab.train.trainer import evaluate

    logits = torch.tensor([[-4.0, -40.0, -400.0], [-300.0, -12.0, -20.0]])  # an RBF head's -distances
    y = torch.tensor([0, 2])
    # by hand: -log softmax(logits / 4)[y], averaged
    z = logits / 4
    want = -(z[[0, 1], y] - torch.logsumexp(z, 1)).mean()
    loss, out = _loss(logits, y, 0.0, 0.25)
    torch.testing.assert_close(loss, want)
    assert torch.equal(out, logits)  # accuracy sees the model's own logits
    torch.testing.assert_close(_loss(logits, y, 0.0)[0], F.cross_entropy(logits, y))

    class Fixed(nn.Module):
        def forward(self, x):
            return logits[: len(x)]

    data = OpenedData([(torch.zeros(2, 1), y)], None, ["a", "b", "c"], 1, "test", DataView("mnist", 1, 28))
    ev = evaluate(Fixed(), data, Platform(torch.device("cpu"), "fp32", False), logit_scale=0.25)
    assert abs(ev["loss"] - want.item()) < 1e-6 and ev["top1"] == 50.0  # evaluation reports the same loss
    assert get_recipe("lenet5_mnist").logit_scale == 0.25 and get_recipe("lenet5_modern_mnist").logit_scale == 1.0


def test_an_unforeseen_load_failure_is_still_one_sentence(tmp_path, monkeypatch):
    from cnnlab.errors import CnnlabError
    from cnnlab.fileio import load_torch

    (tmp_path / "x.pt").write_bytes(b"PK\x03\x04")

    def broken(*a, **k):
        raise OSError("Input/output error")

    monkeypatch.setattr(torch, "load", broken)
    with pytest.raises(CnnlabError, match=r"x.pt is not a readable checkpoint: OSError: Input/output error$"):
        load_torch(tmp_path / "x.pt")


def _image_folder(root: Path, per_class: int, seed: int) -> None:
    from torchvision.io import write_png

    g = torch.Generator().manual_seed(seed)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            write_png(torch.randint(0, 256, (3, 36, 36), dtype=torch.uint8, generator=g), str(root / c / f"{i}.png"))


@pytest.mark.slow
def test_image_folder_runs_keep_their_validation_split_in_every_command(tmp_path):
    """resnet20's recipe (He et al.'s CIFAR protocol) holds out 10% for validation. On a folder of classes the
    run holds out 4 of 40 images, and eval, top9 and embed must use those same 4 (they used a 20% split with
    seed 0, so eval scored training images). A folder with its own val/ ignores the recipe's hold-out (it
    was refused as if the user had given --val-split). Embeddings of the training images are not augmented."""
    import numpy as np

    from cnnlab.analysis.evaluate import evaluate
    from cnnlab.data.view import open_data
    from cnnlab.transfer.embedding import embed_dataset

    _image_folder(tmp_path / "flat", 20, 0)
    run = tmp_path / "run"
    train(TrainConfig(model="resnet20", data=f"folder:{tmp_path / 'flat'}", epochs=1, batch_size=8, quiet=True,
                      seed=5, out=str(run)))
    final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    report = evaluate([str(run)])
    assert report.n == 4 and report.split == "val" and report.top1 == final["eval_top1"]
    view = load_checkpoint(run)["info"].view
    tr, va = open_data(view, "train").dataset, open_data(view, "val").dataset
    assert len(tr) == 36 and not set(tr.indices) & set(va.indices)
    for _ in range(2):
        embed_dataset(str(run), str(tmp_path / f"e{_}.npz"), split="train")
    a, b = np.load(tmp_path / "e0.npz"), np.load(tmp_path / "e1.npz")
    assert a["features"].shape[0] == 36 and np.array_equal(a["features"], b["features"])  # no random crops

    _image_folder(tmp_path / "split" / "train", 6, 1)
    _image_folder(tmp_path / "split" / "val", 3, 2)
    result = train(TrainConfig(model="resnet20", data=f"folder:{tmp_path / 'split'}", epochs=1, batch_size=4,
                               quiet=True, out=str(tmp_path / "run2")))
    assert result.epochs == 1 and evaluate([str(tmp_path / "run2")]).n == 6
    with pytest.raises(CnnlabError, match="already has a train/ folder; val_split applies to a folder of"):
        train(TrainConfig(model="resnet20", data=f"folder:{tmp_path / 'split'}", epochs=1, batch_size=4,
                          quiet=True, out=str(tmp_path / "run3"), val_split=0.1))


@pytest.mark.slow
def test_resuming_with_more_epochs_says_when_it_stretches_the_schedule(tmp_path, capsys):
    from cnnlab.train.recipes import get_recipe
    from cnnlab.train.schedule import Schedule

    run = tmp_path / "run"
    flags = ["lenet5_modern", "--train-limit", "1000", "--quiet", "--out", str(run)]
    assert main(["train", *flags, "--epochs", "1"]) == 0
    assert main(["train", "lenet5_modern", "--resume", str(run), "--epochs", "2"]) == 0
    err = capsys.readouterr().err
    # 1,000 images at batch 128: 7 steps an epoch. One-cycle over 7 steps ends at lr 0.05 x 1e-3; over 14 it
    # rises for int(0.2 x 14) = 2 steps, so step 8 (index 7) is 5/12 of the way down the cosine
    after = 0.05 * (1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * 5 / 12)))
    assert (f"cnnlab: note: --epochs 2 (the run had 1) lays the onecycle schedule over 2 epochs, so the learning "
            f"rate at step 8 is {after:.3g} instead of 5e-05") in err
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()][-1] == 2
    saved = load_checkpoint(run)["info"].recipe
    same = dataclasses.replace(get_recipe("lenet5_modern_mnist"), epochs=saved["epochs"])
    assert Schedule(same, 7).stretched(saved, 14) == ""  # same length: no note
    steps = get_recipe("resnet_cifar")
    assert Schedule(steps, 8).stretched({**saved, "epochs": 1}, 16) == ""  # milestones do not stretch


@pytest.mark.slow
def test_compile_without_a_compiler_is_one_clear_sentence(tmp_path):
    env = {**os.environ, "CXX": str(tmp_path / "no-such-g++"),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # nothing cached from earlier compiles
    run = subprocess.run([sys.executable, "-m", "cnnlab", "train", "lenet5_modern", "--compile", "--epochs", "1",
                          "--train-limit", "500", "--quiet", "--out", str(tmp_path / "run")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "cnnlab: error: --compile failed: torch.compile could not build the model (InvalidCxxCompiler" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.slow
def test_data_a_network_cannot_use_is_refused_before_training(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "lenet5_modern", "--train-limit", "100", "--out", out]) == 2  # batch 128
    assert ("cnnlab: error: 100 training images make no full batch of 128: lower --batch-size, or train on more "
            "images") in capsys.readouterr().err
    assert main(["train", "alexnet", "--data", "mnist", "--train-limit", "200", "--batch-size", "32",
                 "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnlab: error: alexnet cannot train on the 1x28x28 images of mnist (") and \
        "it is built for 3x224x224" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.slow
def test_resume_refuses_flags_that_would_change_the_run(reference_run, tmp_path, capsys):
    ref, _ = reference_run
    before = (ref / "last.pt").read_bytes()
    assert main(["train", "lenet5_modern", "--resume", str(ref), "--data", "fashion_mnist", "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnlab: error: --data, --lr cannot change a run being resumed: it goes on with its own "
                          "settings") and "may change only --epochs, --device, --out, --quiet, --data-dir" in err
    assert (ref / "last.pt").read_bytes() == before  # refused before anything was touched
    assert main(["train", "lenet5", "--nproc", "2", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "--device cuda was asked for but no CUDA GPU is visible" in capsys.readouterr().err
