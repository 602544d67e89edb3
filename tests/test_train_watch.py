"""Watching a run learn (cnnlab.train.watch): health values against an independent computation on a hand-built
net, the snapshot schedule and what a snapshot holds, bit-identical weights with the watch on and off, a
learning-rate change on the fly that a killed-and-resumed run reproduces exactly (with health.jsonl and
snapshots/ ending as the uninterrupted run's), the truncation of what a killed process left, and the flags."""

import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.cli import main
from cnnlab.data.view import DataView, open_data
from cnnlab.errors import CnnlabError, CnnlabNote
from cnnlab.fileio import atomic_write_json
from cnnlab.platform import Platform
from cnnlab.runs import load_checkpoint
from cnnlab.train import TrainConfig, train
from cnnlab.train.distributed import Dist
from cnnlab.train.rundir import RunFolder
from cnnlab.train.watch import Watch, snapshot_due, truncate_jsonl, truncate_snapshots

# two deterministic epochs of the lecture's LeNet-5 on 1,024 real MNIST images, 128 of them held out for a
# quick evaluation: 3 steps an epoch
RUN = dict(model="lenet5_modern", epochs=2, batch_size=256, lr=0.05, train_limit=1024, val_split=0.125,
           deterministic=True, seed=5, quiet=True, log_every=1)
CHANGE_AT, KILL_AT, NEW_LR, CHANGE_ID = 4, 5, 0.01, 7  # in epoch 2 (steps 4-6): the change, then the kill


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# --- health against an independent computation ------------------------------------------------------------------

class Net(nn.Module):
    """fc1 and fc2 share one ReLU module (it runs twice); fc3 is followed by a functional relu (no module to
    hook: dead is null); fc4 by nothing."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.fc4 = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.fc4(F.relu(self.fc3(self.relu(self.fc2(self.relu(self.fc1(x)))))))


def _hand_built() -> Net:
    net = Net()
    with torch.no_grad():
        net.fc1.weight.copy_(torch.tensor([[1., 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]]))
        net.fc1.bias.zero_()
        net.fc2.weight.copy_(torch.eye(4))
        net.fc2.bias.copy_(torch.tensor([0., 0, -10, 0]))  # unit 3 is pushed below 0 for these inputs
    return net


def _fake_training(model, tmp_path, health_every=1):
    """The parts of a Training and TrainConfig that the watch reads, around a plain SGD step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    t = SimpleNamespace(model=model, dist=Dist(), step=0, platform=Platform(torch.device("cpu"), "fp32", False),
                        schedule=SimpleNamespace(steps_per_epoch=100, changes=[]),
                        scaler=torch.amp.GradScaler("cuda", enabled=False), recipe=SimpleNamespace(clip_grad_norm=0))
    cfg = SimpleNamespace(health_every=health_every, snapshots=False, snapshot_every=None, compile=False, resume=None,
                          seed=0)
    watch = Watch(cfg, RunFolder(tmp_path), t, SimpleNamespace(classes=["a", "b"]), {})
    return t, opt, watch


def test_health_values_equal_an_independent_computation(tmp_path):
    torch.manual_seed(0)
    model = _hand_built()
    t, opt, watch = _fake_training(model, tmp_path)
    x, y = torch.tensor([[1., 2, 0], [3, -1, 0]]), torch.tensor([0, 1])
    for _ in range(2):  # the second step has momentum: the update is not just lr * grad
        watch.before_step(t, 0)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        t.step += 1
        watch.after_step(t, 0)
    line = _lines(tmp_path / "health.jsonl")[-1]
    assert line["step"] == 2 and line["epoch"] == 1
    assert [r["name"] for r in line["layers"]] == ["fc1", "fc2", "fc3", "fc4"]
    for r in line["layers"]:
        w = dict(model.named_parameters())[f"{r['name']}.weight"]
        assert r["grad_norm"] == pytest.approx(grads[f"{r['name']}.weight"].norm().item(), rel=1e-6)
        assert r["weight_norm"] == pytest.approx(w.norm().item(), rel=1e-6)
        b = before[f"{r['name']}.weight"]
        assert r["update_ratio"] == pytest.approx(((w.detach() - b).norm() / b.norm()).item(), rel=1e-5)
    # by hand: fc1's outputs for the two rows are [1, -1, 2, -2] and [3, -3, -1, 1] before this step's
    # update; the relu zeroes 4 of 8. fc2 (identity, unit 3 at -10) passes those on and zeroes unit 3 too.
    h1 = F.relu(x @ before["fc1.weight"].T + before["fc1.bias"])
    h2 = F.relu(h1 @ before["fc2.weight"].T + before["fc2.bias"])
    dead = {r["name"]: r["dead"] for r in line["layers"]}
    assert dead["fc1"] == (h1 == 0).float().mean().item() and dead["fc2"] == (h2 == 0).float().mean().item()
    assert _lines(tmp_path / "health.jsonl")[0]["layers"][0]["dead"] == 0.5  # the first step, exactly as above
    assert dead["fc3"] is None and dead["fc4"] is None  # functional relu, and no relu
    assert not model.fc1._forward_hooks and not model.relu._forward_hooks  # hooks were on for that pass only


def test_health_every_n_steps_only(tmp_path):
    model = _hand_built()
    t, opt, watch = _fake_training(model, tmp_path, health_every=3)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    for _ in range(7):
        watch.before_step(t, 0)
        assert bool(model.relu._forward_hooks) == ((t.step + 1) % 3 == 0)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        t.step += 1
        watch.after_step(t, 0)
    assert [r["step"] for r in _lines(tmp_path / "health.jsonl")] == [3, 6]


# --- the snapshot schedule --------------------------------------------------------------------------------------

def test_snapshot_schedule_is_geometric_plus_every_n():
    assert [s for s in range(6000) if snapshot_due(s, 0)] == [0, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
    assert [s for s in range(1001) if snapshot_due(s, 390)] == [0, 10, 20, 50, 100, 200, 390, 500, 780, 1000]


# --- real runs: on and off, a learning-rate change, a kill and a resume --------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run with everything on (health every step, snapshots at their default: every step here), and
    with everything off."""
    root = tmp_path_factory.mktemp("watch")
    train(TrainConfig(out=str(root / "on"), health_every=1, **RUN))
    train(TrainConfig(out=str(root / "off"), health_every=0, snapshots=False, **RUN))
    return root


@pytest.mark.slow
def test_weights_are_bit_identical_with_the_watch_on_and_off(runs):
    assert _same_weights(runs / "on", runs / "off")
    assert not (runs / "off" / "snapshots").exists() and not (runs / "off" / "health.jsonl").exists()
    assert [r["step"] for r in _lines(runs / "on" / "health.jsonl")] == list(range(1, 7))


@pytest.mark.slow
def test_snapshots_hold_what_the_contract_says(runs):
    snaps = runs / "on" / "snapshots"
    index = _lines(snaps / "index.jsonl")
    assert [(r["step"], r["epoch"], r["has_confusion"]) for r in index] == \
        [(0, 0, False), (1, 1, False), (2, 1, False), (3, 1, True), (4, 2, False), (5, 2, False), (6, 2, True)]
    assert sorted(p.name for p in snaps.iterdir()) == sorted(["index.jsonl", "probe.npz"] + [r["file"] for r in index])
    val = open_data(DataView("mnist", 1, 32, {"pad_to": 32}, 0.125, 5, 1024), "val").dataset
    with np.load(snaps / "probe.npz", allow_pickle=False) as p:  # 8 test images as the net sees them (padded to
        # 32x32: the recipe's pad_to), with their labels
        assert p["images"].shape == (8, 32, 32, 1) and p["images"].dtype == np.uint8
        shown = F.pad(val.images[torch.from_numpy(p["indices"])], (2, 2, 2, 2)).permute(0, 2, 3, 1).numpy()
        assert np.array_equal(p["images"], shown) and len(set(p["indices"].tolist())) == 8
        assert np.array_equal(p["labels"], val.labels[torch.from_numpy(p["indices"])].numpy())
    epochs = [r for r in _lines(runs / "on" / "metrics.jsonl") if r["kind"] == "epoch"]
    last = load_checkpoint(runs / "on")
    # the snapshots show the weights as the optimiser moves them: the trained ones, beside which the recipe keeps
    # (and checkpoints as the model) their average
    first = last["trained_model"]["features.0.weight"]
    for r in index:
        with np.load(snaps / r["file"], allow_pickle=False) as z:
            assert z["filters"].shape == (6, 1, 5, 5) and z["filters"].dtype == np.float16
            acts = sorted(k for k in z.files if k.startswith("act__"))
            assert acts == ["act__features.0", "act__features.3"]  # LeNet-5's two convolutions
            assert z["act__features.0"].shape == (8, 6, 28, 28) and z["act__features.3"].shape == (8, 16, 10, 10)
            assert ("confusion" in z.files) == r["has_confusion"]
            if r["has_confusion"]:  # the evaluation pass's own counts: its top-1 and its images (the 130 held out)
                c = z["confusion"]
                assert c.dtype == np.int64 and c.sum() == len(val) and epochs[r["epoch"] - 1]["eval_split"] == "val"
                assert 100.0 * np.trace(c) / c.sum() == pytest.approx(epochs[r["epoch"] - 1]["eval_top1"])
            if r["step"] == 6:
                assert np.array_equal(z["filters"], first.numpy().astype(np.float16))


def _with_control(monkeypatch, folder: Path, kill: bool) -> None:
    """Write control.json into the run folder before step CHANGE_AT (as the lab does: atomically), and, if
    ``kill``, stop the process before step KILL_AT (after the change, before epoch 2's checkpoint)."""
    real = Watch.before_step

    def before_step(self, t, epoch):
        if t.step == CHANGE_AT:
            atomic_write_json(folder / "control.json", {"lr": {"value": NEW_LR, "id": CHANGE_ID}})
        if kill and t.step == KILL_AT:
            raise KeyboardInterrupt
        real(self, t, epoch)

    monkeypatch.setattr(Watch, "before_step", before_step)


@pytest.mark.slow
def test_an_lr_change_is_applied_recorded_and_reproduced_by_a_resume(runs, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    with pytest.MonkeyPatch.context() as mp:
        _with_control(mp, whole, kill=False)
        train(TrainConfig(out=str(whole), health_every=1, **RUN))
    with pytest.MonkeyPatch.context() as mp:
        _with_control(mp, killed, kill=True)
        with pytest.raises(KeyboardInterrupt), warnings.catch_warnings():
            warnings.simplefilter("ignore", CnnlabNote)
            train(TrainConfig(out=str(killed), health_every=1, **RUN))
    assert load_checkpoint(killed)["epoch"] == 1 and [r["step"] for r in _lines(killed / "health.jsonl")][-1] == KILL_AT
    assert _lines(killed / "snapshots" / "index.jsonl")[-1]["step"] == KILL_AT  # what the resume must drop
    # resumed with control.json still there: its id was applied, so only the record replays it, at step 5
    assert main(["train", "lenet5_modern", "--resume", str(killed), "--quiet"]) == 0

    assert not _same_weights(whole, runs / "on")  # the change did change the run
    assert _same_weights(killed, whole)  # and the resumed run made it at the same step
    for run in (whole, killed):
        metrics = _lines(run / "metrics.jsonl")
        changes = [r for r in metrics if r["kind"] == "lr_change"]
        assert len(changes) == 1 and changes[0]["step"] == CHANGE_AT and changes[0]["epoch"] == 2
        assert changes[0]["lr"] == pytest.approx(NEW_LR)
        steps = {r["step"]: r["lr"] for r in metrics if r["kind"] == "step"}  # step lines: lr of step N (1-based)
        ref = {r["step"]: r["lr"] for r in _lines(runs / "on" / "metrics.jsonl") if r["kind"] == "step"}
        assert steps[CHANGE_AT + 1] == pytest.approx(NEW_LR)
        for s in range(CHANGE_AT + 1, 7):  # the schedule's shape is kept: the same factor on every later step
            assert steps[s] / ref[s] == pytest.approx(changes[0]["factor"])
        assert all(steps[s] == ref[s] for s in range(1, CHANGE_AT + 1))
        recorded = json.loads((run / "config.json").read_text())["lr_changes"]
        assert recorded == [{"step": CHANGE_AT, "factor": changes[0]["factor"], "id": CHANGE_ID}]
        assert load_checkpoint(run)["schedule"]["lr_changes"] == recorded
    # kill and resume leave health.jsonl and snapshots/ as the uninterrupted run's, line for line
    assert (killed / "health.jsonl").read_text() == (whole / "health.jsonl").read_text()
    assert (killed / "snapshots" / "index.jsonl").read_text() == (whole / "snapshots" / "index.jsonl").read_text()
    for r in _lines(whole / "snapshots" / "index.jsonl"):
        with np.load(whole / "snapshots" / r["file"]) as a, np.load(killed / "snapshots" / r["file"]) as b:
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)


def test_a_resume_drops_what_a_killed_process_left_after_its_checkpoint(tmp_path):
    health = tmp_path / "health.jsonl"
    health.write_text("".join(json.dumps({"step": s, "layers": []}) + "\n" for s in (50, 100, 150)) + '{"step": 2')
    truncate_jsonl(health, 100)
    assert [r["step"] for r in _lines(health)] == [50, 100]
    snaps = tmp_path / "snapshots"
    snaps.mkdir()
    for step, epoch in ((0, 0), (10, 1), (20, 1), (30, 2)):
        np.savez(snaps / f"step-{step:08d}.npz", step=np.int64(step), epoch=np.int64(epoch))
    (snaps / ".step-00000040.npz.x1y2.tmp").write_bytes(b"half")  # a write killed before its rename
    (snaps / "index.jsonl").write_text("".join(
        json.dumps({"step": s, "epoch": e, "file": f"step-{s:08d}.npz", "has_confusion": False}) + "\n"
        for s, e in ((0, 0), (20, 1), (30, 2))))  # step 10's line was never appended (killed in between)
    truncate_snapshots(snaps, 20)
    assert [(r["step"], r["epoch"]) for r in _lines(snaps / "index.jsonl")] == [(0, 0), (10, 1), (20, 1)]
    assert sorted(p.name for p in snaps.iterdir()) == ["index.jsonl", "step-00000000.npz", "step-00000010.npz",
                                                       "step-00000020.npz"]


# --- settings and flags -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag,value", [("--health-every", "-1"), ("--health-every", "x"), ("--snapshot-every", "0")])
def test_bad_flags_are_one_sentence(capsys, flag, value):
    assert main(["train", "lenet5_modern", flag, value]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and flag in err


def test_the_flags_reach_the_config(monkeypatch):
    import cnnlab.train

    seen = []
    monkeypatch.setattr(cnnlab.train, "train", lambda cfg: seen.append(cfg) or SimpleNamespace(run_dir=".", rank=0))
    assert main(["train", "lenet5_modern", "--health-every", "0", "--no-snapshots", "--snapshot-every", "7"]) == 0
    assert main(["train", "lenet5_modern"]) == 0
    assert [(c.health_every, c.snapshots, c.snapshot_every) for c in seen] == [(0, False, 7), (50, True, None)]


@pytest.mark.parametrize("setting", [dict(health_every=-1), dict(health_every=1.5), dict(snapshot_every=0)])
def test_bad_settings_are_refused(setting):
    with pytest.raises(CnnlabError, match=next(iter(setting))):
        TrainConfig("lenet5", **setting)


def test_a_malformed_or_repeated_control_file_is_ignored(tmp_path):
    t, _, watch = _fake_training(_hand_built(), tmp_path, health_every=0)
    applied = []
    t.schedule.lr = lambda step: 1.0

    def change(step, value, id):
        applied.append((step, value, id))
        t.schedule.changes.append({"step": step, "factor": value, "id": id})
        return t.schedule.changes[-1]

    t.schedule.change = change
    for step, text in enumerate(['{"lr": {"value": 0.5, "id": 1}}', '{"lr": {"value": 0.2, "id": 1}}',  # id again
                                 '{"lr": {"value": -1, "id": 2}}', '{"lr": ', '{"lr": {"value": 0.3, "id": 3}}']):
        (tmp_path / "control.json").write_text(text + " " * step)  # another size: seen as a new write
        t.step = step
        watch.before_step(t, 0)
    assert applied == [(0, 0.5, 1), (4, 0.3, 3)]
    assert [r["step"] for r in _lines(tmp_path / "metrics.jsonl")] == [0, 4]
    assert math.isclose(json.loads((tmp_path / "config.json").read_text())["lr_changes"][1]["factor"], 0.3)


def test_the_probe_batch_of_an_image_folder_is_its_evaluation_images_as_shown(tmp_path):
    from PIL import Image

    from cnnlab.data.view import display
    from cnnlab.train.watch import probe_batch

    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("val", 6)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    data = open_data(DataView(f"folder:{tmp_path}", 3, 32), "val", workers=0)
    shown, labels, indices, x = probe_batch(data, seed=3)
    assert shown.shape == (8, 32, 32, 3) and shown.dtype == np.uint8 and x.shape == (8, 3, 32, 32)
    assert list(indices) == sorted(set(indices.tolist())) and probe_batch(data, seed=3)[2].tolist() == indices.tolist()
    for k, i in enumerate(indices):  # the image as the network gets it, and as a page shows it
        image, label = data.dataset[int(i)]
        assert torch.equal(x[k], image) and labels[k] == label
        assert np.abs(shown[k].astype(float) - display(image[None], data.view) * 255).max() <= 0.5


def test_the_probe_pass_leaves_modes_and_random_stream_as_they_were():
    from cnnlab.train.watch import untouched

    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    model[1].eval()  # a module kept in eval mode on purpose (a frozen BN) stays so
    state, stats = torch.get_rng_state(), model[1].running_mean.clone()
    with untouched(model, torch.device("cpu")):
        assert not any(m.training for m in model.modules())
        torch.rand(3)  # a model that draws anyway
        model(torch.randn(2, 4))
    assert torch.equal(torch.get_rng_state(), state) and torch.equal(model[1].running_mean, stats)
    assert [m.training for m in model.modules()] == [True, True, False, True]
