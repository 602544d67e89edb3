"""Data-parallel training under torchrun on CPU (gloo, 2 processes) on real MNIST: the same weights and
metrics as one process, only rank 0 writes, a killed worker is survived, misconfigured launches fail fast."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnlab.train import TrainConfig, train
from cnnlab.train.checkpoint import load_checkpoint

# lenet5_modern has neither BatchNorm nor dropout, so a shard of the batch computes exactly its rows of the
# single-process forward pass. In float32 the different summation order (two half-batch gradients averaged)
# gives 1e-7 differences that training amplifies to 1e-3 within 90 steps; in float64 they stay tiny, so the
# comparison is made there. 6,000 images less 10% validation = 21 steps of 256 per epoch.
FAST = dict(model="lenet5_modern", epochs=2, batch_size=256, lr=0.05, quiet=True, deterministic=True, seed=3,
            train_limit=6_000, val_split=0.1, log_every=5, precision="fp64")
FLAGS = ["lenet5_modern", "--epochs", "2", "--batch-size", "256", "--lr", "0.05", "--quiet", "--deterministic",
         "--seed", "3", "--train-limit", "6000", "--val-split", "0.1", "--log-every", "5", "--precision", "fp64"]
ENV = {**os.environ, "CNNLAB_DIST_TIMEOUT": "60",
       "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
# measured: after 42 float64 steps the weights differ by at most 1.7e-16 (2e-14 relative)
ATOL, RTOL = 1e-12, 1e-9


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    train(TrainConfig(out=str(out), **FAST))
    return out


@pytest.fixture(scope="module")
def double(tmp_path_factory):
    out = tmp_path_factory.mktemp("two")
    run = subprocess.run(TORCHRUN + ["-m", "cnnlab", "train", *FLAGS, "--out", str(out)],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return out, run


def test_two_processes_give_the_single_process_weights_and_metrics(single, double):
    two, _ = double
    a, b = load_checkpoint(single)["model"], load_checkpoint(two)["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=ATOL, rtol=RTOL)
    m1, m2 = _metrics(single), _metrics(two)
    assert [(m["kind"], m["epoch"], m["step"]) for m in m1] == [(m["kind"], m["epoch"], m["step"]) for m in m2]
    for x, y in zip(m1, m2):
        for key in ("loss", "lr", "train_loss", "eval_loss"):
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=1e-10, abs=1e-12), key
        for key in ("train_top1", "eval_top1", "eval_top5"):
            if key in x:
                assert y[key] == x[key], key


def test_only_rank_0_writes_and_prints(double):
    two, run = double
    assert {p.name for p in two.iterdir()} == {"config.json", "metrics.jsonl", "curves.png", "last.pt", "best.pt",
                                               "summary.md"}
    lines = (two / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines))  # a second writer would have doubled every line
    assert run.stdout.strip().splitlines() == [str(two)]  # --quiet prints the run folder, once
    cfg = json.loads((two / "config.json").read_text())
    assert cfg["distributed"] == {"world_size": 2, "backend": "gloo", "per_rank_batch": 128}


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((int(e[5:]) for e in env if e.startswith(b"RANK=")), None)


def test_a_killed_worker_is_restarted_from_the_checkpoint_and_the_result_is_unchanged(double, tmp_path):
    two, _ = double
    # the `cnnlab train --nproc` shortcut: cnnlab -> torchrun -> 2 workers
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "train", *FLAGS, "--out", str(tmp_path), "--nproc", "2",
                             "--max-restarts", "1"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline, victim = time.time() + 240, None
    while time.time() < deadline and proc.poll() is None:  # wait for a step line of epoch 2, then kill rank 0
        m = tmp_path / "metrics.jsonl"
        if m.exists() and any(json.loads(l)["epoch"] == 2 for l in m.read_text().splitlines() if l.endswith("}")):
            workers = [w for t in _children(proc.pid) for w in _children(t)]
            victim = next((w for w in workers if _rank_of(w) == 0), None)
            break
        time.sleep(0.02)
    assert victim is not None, "never saw the workers in epoch 2"
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, [l for l in err.splitlines() if "error" in l.lower()]
    assert load_checkpoint(tmp_path)["epoch"] == 2
    a, b = load_checkpoint(two)["model"], load_checkpoint(tmp_path)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit: the restart replays epoch 2 exactly
    # metrics.jsonl: epoch 2's step lines written before the kill were dropped on resume and written again
    untimed = lambda run: [{k: v for k, v in m.items() if k not in ("images_per_s", "seconds", "elapsed")}
                           for m in _metrics(run)]
    assert untimed(tmp_path) == untimed(two)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_batch_the_world_does_not_divide_fails_fast(tmp_path):
    t0 = time.time()
    run = subprocess.run(TORCHRUN + ["-m", "cnnlab", "train", *FLAGS, "--batch-size", "255", "--out", str(tmp_path)],
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "must split evenly over 2 processes" in run.stderr
    assert time.time() - t0 < 60


def test_an_unreachable_rendezvous_fails_within_the_timeout(tmp_path):
    # rank 1 of 2 whose rank 0 never comes: joining must give up after CNNLAB_DIST_TIMEOUT seconds
    env = {**ENV, "RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "CNNLAB_DIST_TIMEOUT": "3"}
    t0 = time.time()
    run = subprocess.run([sys.executable, "-m", "cnnlab", "train", *FLAGS, "--out", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "could not join the process group at 127.0.0.1" in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and time.time() - t0 < 60


@pytest.mark.parametrize("is_host,error", [("true", "RendezvousTimeoutError"),
                                           ("false", "RendezvousConnectionError")])
def test_torchruns_multi_node_rendezvous_gives_up_within_join_timeout(tmp_path, is_host, error):
    """Node 1 of 2 whose peer never comes (is_host=true: it serves the rendezvous itself) or whose rendezvous
    endpoint has nobody listening (is_host=false): torchrun, as docs/distributed.md tells users to launch
    it, stops within its join_timeout instead of waiting for ever, and no worker ever starts."""
    port = _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "cnnlab-test",
           "--rdzv-conf", f"join_timeout=5,read_timeout=5,is_host={is_host}",
           "-m", "cnnlab", "train", *FLAGS, "--out", str(tmp_path)]
    t0 = time.time()
    run = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and error in run.stderr, run.stderr[-2000:]
    assert time.time() - t0 < 60
    assert not (tmp_path / "config.json").exists()  # no worker ran


def test_the_ranks_shards_are_disjoint_and_make_up_the_single_process_batch():
    from cnnlab.data.memory import ArrayDataset, Augment, MemoryLoader

    ds = ArrayDataset("toy", "train", torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 1, 4, 4)
                      .contiguous(), torch.arange(40), ["x"], (0.0,), (1 / 255,))
    kw = dict(aug=Augment(crop_pad=1, flip=True), seed=5, drop_last=True)
    for epoch in (0, 1):
        one = MemoryLoader(ds, 8, True, **kw, epoch=epoch)
        ranks = [MemoryLoader(ds, 8, True, **kw, epoch=epoch, rank=r, world=2) for r in (0, 1)]
        for (x, y), (x0, y0), (x1, y1) in zip(one, *ranks):
            assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)
            assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)  # the same augmentation draws


def test_nproc_needs_a_run_folder(capsys):
    from cnnlab.cli import main

    assert main(["train", "lenet5_modern", "--nproc", "2"]) == 2
    assert "needs --out" in capsys.readouterr().err
