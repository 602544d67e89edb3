"""No run is lost or overwritten: a resumed run writes where it is told (a copied, moved or relatively named
run), a new run never replaces one without --overwrite, kill -9 at every checkpoint write and at random moments
resumes bit for bit with nothing left over, best.pt is repaired when a kill left it behind last.pt, checkpoints
verify their CRCs, and a full disk leaves the previous checkpoint and metrics.jsonl consistent."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnlab.cli import main
from cnnlab.errors import CnnlabError
from cnnlab.runs import RunInfo, load_checkpoint, save_checkpoint
from cnnlab.train import TrainConfig, train
from cnnlab.train.rundir import RUN_FILES

HERE = Path(__file__).parent
# two short deterministic epochs of the lecture's LeNet-5 on 1,024 real MNIST images (4 steps each), with a health
# line every step and a snapshot every step (the default: about 4 an epoch), which a kill must not leave torn
ARGS = ["lenet5_modern", "--epochs", "2", "--batch-size", "256", "--lr", "0.05", "--train-limit", "1024",
        "--deterministic", "--seed", "5", "--quiet", "--health-every", "1"]


def _config(out, **kw) -> TrainConfig:
    settings = dict(model="lenet5_modern", epochs=2, batch_size=256, lr=0.05, train_limit=1024, deterministic=True,
                    seed=5, quiet=True, out=str(out), health_every=1)
    return TrainConfig(**{**settings, **kw})


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must end equal to."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train(_config(out))
    return out


def _weights(run: Path) -> dict:
    return load_checkpoint(run)["model"]


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _epochs(run: Path) -> list[int]:
    return [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "epoch"]


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


# --- resume writes where it is told ---------------------------------------------------------------------------

@pytest.mark.slow
def test_a_copied_run_resumes_in_the_copy_and_leaves_the_original_alone(reference, tmp_path):
    original = tmp_path / "original"
    train(_config(original, epochs=1))
    before = {p: p.read_bytes() for p in original.rglob("*") if p.is_file()}
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    assert main(["train", "lenet5_modern", "--resume", str(copy), "--epochs", "2", "--quiet"]) == 0
    assert {p: p.read_bytes() for p in original.rglob("*") if p.is_file()} == before  # not a byte of the original
    # changed (snapshots/ included)
    assert load_checkpoint(copy)["epoch"] == 2 and _epochs(copy) == [1, 2]


@pytest.mark.slow
def test_a_moved_run_resumes_where_it_now_is(tmp_path):
    first = tmp_path / "first"
    train(_config(first, epochs=1))
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    first.rename(moved)
    assert main(["train", "lenet5_modern", "--resume", str(moved), "--epochs", "2", "--quiet"]) == 0
    assert not first.exists()  # the recorded --out is history, not a destination
    assert load_checkpoint(moved)["epoch"] == 2


@pytest.mark.slow
def test_a_run_made_with_a_relative_out_resumes_from_another_directory(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    assert main(["train", *ARGS, "--epochs", "1", "--out", "runs/r"]) == 0
    monkeypatch.chdir(tmp_path / "b")
    assert main(["train", "lenet5_modern", "--resume", "../a/runs/r", "--epochs", "2", "--quiet"]) == 0
    assert load_checkpoint(tmp_path / "a" / "runs" / "r")["epoch"] == 2
    assert list((tmp_path / "b").iterdir()) == []  # no new folder named after the recorded --out


# --- a new run never replaces one silently ---------------------------------------------------------------------

def _fake_run(folder: Path, epoch: int = 1) -> dict:
    """A run folder's files, written as the trainer writes them (no training needed to test the refusal)."""
    info = RunInfo("lenet5_modern", tuple("0123456789"), 1, (1, 28, 28), "mnist")
    save_checkpoint(folder / "last.pt", info, {"w": torch.ones(2)}, {"epoch": epoch})
    save_checkpoint(folder / "best.pt", info, {"w": torch.ones(2)}, {"epoch": epoch})
    (folder / "metrics.jsonl").write_text(json.dumps({"kind": "epoch", "epoch": 1}) + "\n")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("resume", [False, True])
def test_a_folder_holding_a_run_is_refused_and_left_untouched(tmp_path, capsys, resume):
    held = tmp_path / "held"
    before = _fake_run(held)
    other = tmp_path / "other"
    _fake_run(other)
    how = ["lenet5_modern", "--resume", str(other)] if resume else ARGS  # a resumed run sent into another run
    assert main(["train", *how, "--out", str(held)]) == 2
    err = _error(capsys)
    assert f"{held} already holds a run" in err and "--overwrite" in err
    assert ("--resume" in err) == (not resume)  # a new run is told how to continue the one it met
    assert {p.name: p.read_bytes() for p in held.iterdir()} == before


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_is_no_run_to_keep(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}\n")  # what kill -9 in the first epoch leaves
    (out / "metrics.jsonl").write_text(json.dumps({"kind": "step", "epoch": 1, "step": 50, "loss": 2.3}) + "\n")
    assert main(["train", *ARGS, "--out", str(out)]) == 0  # nothing to resume, nothing to lose: no refusal
    assert _epochs(out) == [1, 2] and '"step": 50, "loss": 2.3' not in (out / "metrics.jsonl").read_text()


@pytest.mark.slow
def test_overwrite_replaces_every_file_of_the_old_run(tmp_path):
    out = tmp_path / "run"
    _fake_run(out, epoch=7)
    (out / "summary.md").write_text("the old run\n")
    train(_config(out, epochs=1, overwrite=True))
    assert load_checkpoint(out / "best.pt")["epoch"] == 1 and load_checkpoint(out)["epoch"] == 1
    assert _epochs(out) == [1] and "the old run" not in (out / "summary.md").read_text()


# --- a run that fails before its first checkpoint leaves nothing ------------------------------------------------

@pytest.mark.slow
def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(tmp_path, monkeypatch):
    import cnnlab.train.trainer as trainer

    monkeypatch.setattr(trainer, "classification_loss", lambda *a: (torch.tensor(float("nan")), torch.zeros(1, 10)))
    with pytest.raises(CnnlabError, match="the loss became nan"):
        train(_config(tmp_path / "new" / "run"))
    assert not (tmp_path / "new" / "run").exists()  # made by the run, taken back by it
    given = tmp_path / "given"
    given.mkdir()
    (given / "notes.txt").write_text("mine")
    with pytest.raises(CnnlabError):
        train(_config(given))
    assert [p.name for p in given.iterdir()] == ["notes.txt"]  # the user's folder and files stay


# --- kill -9 at every checkpoint write, and at random moments ----------------------------------------------------

def _killed(out: Path, *, at: int | None = None, when: str = "before", after_s: float | None = None, resume=False):
    """Start the command line in a process and kill it with SIGKILL: at the ``at``-th write of a run file, or
    ``after_s`` seconds after it started. Returns the exit code."""
    args = (["train", "lenet5_modern", "--resume", str(out), "--quiet"] if resume
            else ["train", *ARGS, "--out", str(out)])
    if at is not None:
        cmd = [sys.executable, str(HERE / "kill_at_write.py"), str(at), when, *args]
    else:
        cmd = [sys.executable, "-m", "cnnlab", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if after_s is not None:
        time.sleep(after_s)
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert "Traceback" not in err, err
    return proc.returncode


def _finish(out: Path) -> None:
    """What a user does after a crash: resume if there is a checkpoint, else start the run again."""
    if (out / "last.pt").exists():
        assert main(["train", "lenet5_modern", "--resume", str(out), "--quiet"]) == 0
    else:
        assert main(["train", *ARGS, "--out", str(out)]) == 0


def _assert_whole(out: Path, reference: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(RUN_FILES + ("health.jsonl", "snapshots"))  # no
    # temporary file left over; the watch's records as the uninterrupted run's, line for line and file for file
    assert (out / "health.jsonl").read_text() == (reference / "health.jsonl").read_text()
    assert (out / "snapshots" / "index.jsonl").read_text() == (reference / "snapshots" / "index.jsonl").read_text()
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == \
        sorted(p.name for p in (reference / "snapshots").iterdir())
    assert _same_weights(out, reference)
    assert _epochs(out) == [1, 2]  # every epoch once
    best = load_checkpoint(out / "best.pt")
    last = load_checkpoint(out)
    assert best["best_top1"] == last["best_top1"] == max(h["eval_top1"] for h in last["history"])
    assert _same_weights(out / "best.pt", reference / "best.pt")


# The run writes, in order: config.json (1); epoch 1: last.pt (2), best.pt (3); epoch 2: last.pt (4), best.pt
# (5); then curves.png and summary.md (a run this short draws its curves once, at the end). Every checkpoint
# write is killed once: before its rename (a complete temporary file left behind) or after it; (4, after)
# lands between last.pt and best.pt, the moment that left best.pt behind last.pt.
@pytest.mark.slow
def test_kill_9_at_every_checkpoint_write_resumes_bit_for_bit(reference, tmp_path):
    assert load_checkpoint(reference / "best.pt")["epoch"] == 2  # epoch 2 is the best: both writes happen
    for at, when in ((2, "before"), (3, "after"), (4, "after"), (5, "before")):
        out = tmp_path / f"{at}-{when}"
        assert _killed(out, at=at, when=when) == -signal.SIGKILL
        _finish(out)
        _assert_whole(out, reference)


@pytest.mark.slow
def test_kill_9_at_random_moments_resumes_bit_for_bit(reference, tmp_path):
    rng = random.Random(15)
    for i in range(2):
        out = tmp_path / f"random-{i}"
        _killed(out, after_s=rng.uniform(2.0, 9.0))  # start-up, training or a write, wherever it lands
        if (out / "last.pt").exists():  # and a kill in the resumed run too
            _killed(out, after_s=rng.uniform(2.0, 6.0), resume=True)
        _finish(out)
        _assert_whole(out, reference)


def test_resume_repairs_a_best_pt_left_behind_last_pt(tmp_path):
    from cnnlab.train.rundir import repair_best

    info = RunInfo("lenet5_modern", tuple("0123456789"), 1, (1, 28, 28), "mnist")
    history = [{"kind": "epoch", "epoch": 1, "eval_top1": 90.0}, {"kind": "epoch", "epoch": 2, "eval_top1": 95.0}]
    save_checkpoint(tmp_path / "best.pt", info, {"w": torch.ones(1)}, {"epoch": 1, "best_top1": 90.0,
                                                                     "history": history[:1]})
    last = {"epoch": 2, "best_top1": 95.0, "history": history}
    save_checkpoint(tmp_path / "last.pt", info, {"w": torch.full((1,), 2.0)}, last)
    assert repair_best(tmp_path, load_checkpoint(tmp_path))
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    assert not repair_best(tmp_path, load_checkpoint(tmp_path))  # nothing more to repair
    # the best epoch is an earlier one: best.pt is left as it is
    history[1]["eval_top1"] = 80.0
    save_checkpoint(tmp_path / "last.pt", info, {"w": torch.full((1,), 3.0)}, {**last, "best_top1": 90.0})
    assert not repair_best(tmp_path, load_checkpoint(tmp_path))


# --- checkpoints verify themselves --------------------------------------------------------------------------------

def _flip_a_weight_byte(path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(path) as z:
        record = max(z.infolist(), key=lambda i: i.file_size)  # the largest tensor's bytes
    data = bytearray(path.read_bytes())
    with open(path, "rb") as f:  # the record's data starts after its local header (30 bytes, name, extra)
        f.seek(record.header_offset + 26)
        name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
    data[record.header_offset + 30 + name_len + extra_len + 5] ^= 0x7F  # an exponent byte: a weight far off
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_checkpoint_is_caught_by_its_checksum(tmp_path, capsys):
    info = RunInfo("lenet5_modern", tuple("0123456789"), 1, (1, 28, 28), "mnist")
    save_checkpoint(tmp_path / "last.pt", info, {"w": torch.ones(1000)}, {"epoch": 1})
    _flip_a_weight_byte(tmp_path / "last.pt")
    with pytest.raises(CnnlabError, match="fails its CRC-32 check"):
        load_checkpoint(tmp_path)
    assert main(["eval", str(tmp_path)]) == 2
    err = _error(capsys)
    assert str(tmp_path / "last.pt") in err and "best.pt" in err  # names the file and what to do


@pytest.mark.parametrize("content", [b"root:x:0:0:root:/root:/bin/bash\n" * 40, bytes(range(256)) * 12])
def test_a_file_that_is_no_checkpoint_at_all_says_so(tmp_path, capsys, content):
    (tmp_path / "passwd.pt").write_bytes(content)  # text, or bytes torch's legacy reader trips over
    assert main(["eval", str(tmp_path / "passwd.pt")]) == 2
    assert "is not a PyTorch file" in _error(capsys)


def test_a_model_name_where_a_run_is_needed_says_it_is_a_model(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "lenet5", "x.png"]) == 2
    assert "lenet5 is a model, not a trained run" in _error(capsys)


def test_checkpoints_with_parts_missing_are_one_sentence(tmp_path, capsys):
    info = RunInfo("lenet5_modern", tuple("0123456789"), 1, (1, 28, 28), "mnist")
    save_checkpoint(tmp_path / "weights.pt", info, {"w": torch.ones(1)}, {"epoch": 1})  # no training state
    assert main(["train", "lenet5_modern", "--resume", str(tmp_path / "weights.pt")]) == 2
    assert "holds weights but not the training state that resuming needs (optimizer, step" in _error(capsys)
    blob = torch.load(tmp_path / "weights.pt", weights_only=True)
    del blob["info"]["recipe"]  # how the images were prepared: without it no command can feed the network
    torch.save(blob, tmp_path / "no-recipe.pt")
    for argv in (["eval", str(tmp_path / "no-recipe.pt")], ["train", "lenet5_modern", "--resume",
                                                             str(tmp_path / "no-recipe.pt")]):
        assert main(argv) == 2
        assert "is a cnnlab checkpoint with parts missing (KeyError: 'recipe')" in _error(capsys)


# --- a full disk --------------------------------------------------------------------------------------------------

def _disk_fills_at_epoch_2_checkpoint(monkeypatch):
    """Writes of the run's epoch-2 last.pt fail with ENOSPC, as a full disk makes them fail."""
    import errno

    import cnnlab.fileio as fileio

    real, seen = fileio.os.fdopen, []

    def fdopen(fd, mode="r", *a, **k):
        f = real(fd, mode, *a, **k)
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith(".last.pt."):
            seen.append(name)
            if len(seen) == 2:
                def write(data, _f=f):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                f.write = write
        return f

    monkeypatch.setattr(fileio.os, "fdopen", fdopen)


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_keeps_the_run_consistent(reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _disk_fills_at_epoch_2_checkpoint(monkeypatch)
    assert main(["train", *ARGS, "--out", str(out)]) == 2
    err = _error(capsys)
    assert "disk full" in err and str(out / "last.pt") in err
    monkeypatch.undo()
    assert load_checkpoint(out)["epoch"] == 1 and _epochs(out) == [1]  # the checkpoint and the metrics agree
    assert not list(out.glob(".*.tmp"))
    _finish(out)  # space freed: the run resumes and ends as if nothing happened
    _assert_whole(out, reference)


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                        capture_output=True).returncode == 0
    return ok


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="mounting a small tmpfs needs root on Linux")
def test_a_really_full_disk_says_disk_full(tmp_path):
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "2200k"):  # room for the first checkpoints (about 0.5 MB each) and the snapshots (0.1 MB
        # each, 9 in all), not for the next checkpoint
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        proc = subprocess.run([sys.executable, "-m", "cnnlab", "train", *ARGS, "--out",
                               str(disk / "run")], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("cnnlab: error: disk full writing ") and len(proc.stderr.splitlines()) == 1
        ckpt = load_checkpoint(disk / "run")
        assert _epochs(disk / "run") == list(range(1, ckpt["epoch"] + 1))
        assert not list((disk / "run").glob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.slow
def test_eval_of_a_run_whose_folder_cannot_be_written_still_prints_its_figures(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(HERE / "fixtures" / "run-format-1", run)
    (run / "confusion-val.png").mkdir()  # the picture cannot be written (as in a read-only folder, even as root)
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "val set, 600 images" in out and "top-1 85.17%" in out and "confusion matrix: not written" in out
