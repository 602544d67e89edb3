"""Data-parallel training under torchrun on CPU (gloo, 2 processes) on real MNIST: the same weights and
metrics as one process, only rank 0 writes, a killed worker is survived, misconfigured launches fail fast;
image-folder shards; the GPU path (NCCL, a GPU per worker, SyncBatchNorm) with stand-ins for CUDA, and for
real where 2 GPUs are visible."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.train import TrainConfig, train
from cnnlab.runs import load_checkpoint

# lenet5_modern has neither BatchNorm nor dropout, so a shard of the batch computes exactly its rows of the
# single-process forward pass. In float32 the different summation order (two half-batch gradients averaged)
# gives 1e-7 differences that training amplifies to 1e-3 within 90 steps; in float64 they stay tiny, so the
# comparison is made there. 6,000 images less 10% validation = 21 steps of 256 per epoch.
FAST = dict(model="lenet5_modern", epochs=2, batch_size=256, lr=0.05, quiet=True, deterministic=True, seed=3,
            train_limit=6_000, val_split=0.1, log_every=5, precision="fp64", health_every=5)
FLAGS = ["lenet5_modern", "--epochs", "2", "--batch-size", "256", "--lr", "0.05", "--quiet", "--deterministic",
         "--seed", "3", "--train-limit", "6000", "--val-split", "0.1", "--log-every", "5", "--precision", "fp64",
         "--health-every", "5"]
# One OpenMP thread in every worker: torchrun sets it for --nproc-per-node 2 but leaves a one-worker node alone,
# and float64 kernels may reduce in another order with other thread counts (seen on an AMX Xeon), so runs
# compared bit for bit must be made with the same threads.
ENV = {**os.environ, "CNNLAB_DIST_TIMEOUT": "60", "OMP_NUM_THREADS": "1",
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


@pytest.mark.slow
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
    # the snapshots at the same steps; the epochs' confusion matrices summed over both ranks' shares
    assert (two / "snapshots" / "index.jsonl").read_text() == (single / "snapshots" / "index.jsonl").read_text()
    for r in map(json.loads, (single / "snapshots" / "index.jsonl").read_text().splitlines()):
        if r["has_confusion"]:
            with np.load(single / "snapshots" / r["file"]) as c1, np.load(two / "snapshots" / r["file"]) as c2:
                assert np.array_equal(c1["confusion"], c2["confusion"])
    h1, h2 = ([json.loads(x) for x in (run / "health.jsonl").read_text().splitlines()] for run in (single, two))
    assert [h["step"] for h in h1] == [h["step"] for h in h2] == list(range(5, 43, 5))
    for x, y in zip(h1, h2):  # gradients are averaged over the ranks: the single process's, to rounding
        for lx, ly in zip(x["layers"], y["layers"]):
            assert ly["grad_norm"] == pytest.approx(lx["grad_norm"], rel=1e-9)


@pytest.mark.slow
def test_only_rank_0_writes_and_prints(double):
    two, run = double
    assert {p.name for p in two.iterdir()} == {"config.json", "metrics.jsonl", "curves.png", "last.pt", "best.pt",
                                               "summary.md", "health.jsonl", "snapshots"}
    for name in ("metrics.jsonl", "health.jsonl", "snapshots/index.jsonl"):
        lines = (two / name).read_text().splitlines()
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


def _listening(pids: list[int]) -> list[str]:
    """The local addresses ("127.0.0.1:PORT", "0.0.0.0:PORT", "[::]:PORT") of the TCP sockets on which any of
    ``pids`` listens, read from /proc (no tool needed)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            pass
    found = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # state LISTEN
                hexaddr, port = f[1].split(":")
                raw = bytes.fromhex(hexaddr)
                if v6:
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    addr = "[" + socket.inet_ntop(socket.AF_INET6, raw) + "]"
                else:
                    addr = socket.inet_ntop(socket.AF_INET, raw[::-1])
                found.append(f"{addr}:{int(port, 16)}")
    return found


@pytest.mark.slow
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
            launcher = _children(proc.pid)
            workers = [w for t in launcher for w in _children(t)]
            victim = next((w for w in workers if _rank_of(w) == 0), None)
            # --nproc is a single-machine job: torchrun's stores and gloo listen on the loopback interface only
            servers = _listening([proc.pid, *launcher, *workers])
            assert servers and all(a.startswith(("127.0.0.1:", "[::1]:")) for a in servers), servers
            break
        time.sleep(0.02)
    assert victim is not None, "never saw the workers in epoch 2"
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, "\n".join(err.splitlines()[-60:])  # the restarted attempt's own words
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


@pytest.mark.slow
def test_a_batch_the_world_does_not_divide_fails_fast(tmp_path):
    t0 = time.time()
    run = subprocess.run(TORCHRUN + ["-m", "cnnlab", "train", *FLAGS, "--batch-size", "255", "--out", str(tmp_path)],
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "must split evenly over 2 processes" in run.stderr
    assert time.time() - t0 < 60


@pytest.mark.slow
def test_an_unreachable_rendezvous_fails_within_the_timeout(tmp_path):
    # rank 1 of 2 whose rank 0 never comes: joining must give up after CNNLAB_DIST_TIMEOUT seconds
    env = {**ENV, "RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "CNNLAB_DIST_TIMEOUT": "3"}
    t0 = time.time()
    run = subprocess.run([sys.executable, "-m", "cnnlab", "train", *FLAGS, "--out", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "could not join the process group at 127.0.0.1" in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and time.time() - t0 < 60


@pytest.mark.slow
def test_rank_0_launched_without_torchrun_serves_a_loopback_master_on_loopback_only(tmp_path):
    # RANK/WORLD_SIZE/MASTER_ADDR set by hand (no torchrun agent): rank 0 hosts the store itself. A TCPStore
    # server listens on every interface unless given a socket; for MASTER_ADDR 127.0.0.1 cnnlab gives it one.
    port = _free_port()
    env = {**ENV, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "CNNLAB_DIST_TIMEOUT": "5"}
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "train", *FLAGS, "--out", str(tmp_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    servers, deadline = [], time.time() + 60
    while not servers and time.time() < deadline and proc.poll() is None:
        servers = _listening([proc.pid])
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    assert servers == [f"127.0.0.1:{port}"], servers
    assert proc.returncode == 2 and "could not join the process group" in err  # rank 1 never came


@pytest.mark.parametrize("is_host,error", [("true", "RendezvousTimeoutError"),
                                           ("false", "RendezvousConnectionError")])
@pytest.mark.slow
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


# --- the GPU path, checked on this CPU-only machine with stand-ins for CUDA and the process group -------------

class _Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))


@pytest.fixture
def fake_two_gpus(monkeypatch):
    """A machine with two CUDA GPUs as far as distributed.init can tell; records what it asks of torch."""
    import torch.distributed as tdist

    rec = {"set_device": _Recorder(), "init_process_group": _Recorder(), "TCPStore": _Recorder()}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", rec["set_device"])
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    monkeypatch.setattr(tdist, "TCPStore", lambda *a, **k: rec["TCPStore"](*a, **k) or "store")
    monkeypatch.setattr(tdist, "PrefixStore", lambda prefix, store: (prefix, store))
    monkeypatch.setattr(tdist, "init_process_group", rec["init_process_group"])
    for k, v in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node0", "MASTER_PORT": "29500",
                 "TORCHELASTIC_RESTART_COUNT": "2"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    from cnnlab.train import distributed
    monkeypatch.setattr(distributed, "fresh_prefix", lambda store, rank, world, seconds, restarts:
                        ("cnnlab/session", restarts))  # agreeing needs the other ranks (tested below)
    return rec


def test_on_gpus_each_worker_takes_its_local_gpu_and_nccl(fake_two_gpus):
    from cnnlab.train import distributed

    for device in ("auto", "cuda"):
        fake_two_gpus["init_process_group"].calls.clear()
        d, name = distributed.init(device)
        assert (d.rank, d.world, d.local_rank, name) == (3, 4, 1, "cuda")
        (args, kw), = fake_two_gpus["init_process_group"].calls
        assert args == ("nccl",) and kw["rank"] == 3 and kw["world_size"] == 4
        assert kw["device_id"] == torch.device("cuda", 1)  # NCCL bound to this worker's GPU, formed eagerly
        assert kw["store"] == ("cnnlab/session", "store") and d.restarted  # restart count 2
    assert all(a == (1,) for a, _ in fake_two_gpus["set_device"].calls)
    (args, kw), = fake_two_gpus["TCPStore"].calls[:1]
    assert args[:3] == ("node0", 29500, 4) and kw["is_master"] is False  # only global rank 0 hosts the store


def test_cpu_workers_use_gloo_even_where_gpus_exist(fake_two_gpus):
    from cnnlab.train import distributed

    d, name = distributed.init("cpu")
    (args, kw), = fake_two_gpus["init_process_group"].calls
    assert name == "cpu" and args == ("gloo",) and kw["device_id"] is None
    assert not fake_two_gpus["set_device"].calls


def test_more_workers_per_node_than_gpus_is_refused(fake_two_gpus, monkeypatch):
    from cnnlab.errors import CnnlabError
    from cnnlab.train import distributed

    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(CnnlabError, match="local rank 2 has no GPU: this machine has 2"):
        distributed.init("auto")
    assert not fake_two_gpus["init_process_group"].calls


@pytest.mark.slow
def test_wrap_puts_ddp_on_the_workers_gpu_and_sync_bn_keeps_the_optimisers_tensors(monkeypatch):
    import torch.nn.parallel

    from cnnlab.models import create_model
    from cnnlab.train import distributed

    wrapped = []

    class FakeDDP(torch.nn.Module):  # DDP itself needs an initialised process group
        def __init__(self, module, device_ids=None, find_unused_parameters=False):
            super().__init__()
            self.module, self.device_ids = module, device_ids
            wrapped.append(self)

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", FakeDDP)
    torch.manual_seed(0)
    net = create_model("resnet20", num_classes=10)
    x = torch.randn(4, 3, 32, 32)
    net.eval()
    before = net(x)
    keys = list(net.state_dict())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)  # built before the conversion, as the trainer does
    buffers = {n: b for n, b in net.named_buffers()}
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())

    model, step = distributed.wrap(net, torch.device("cuda", 1), sync_bn=True)
    assert step.device_ids == [1] and step.module is model
    assert n_bn == 19 and sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules()) == n_bn
    assert not any(type(m) is torch.nn.BatchNorm2d for m in model.modules())
    assert [id(p) for p in model.parameters()] == [id(p) for p in optimizer.param_groups[0]["params"]]
    assert all(b is buffers[n] for n, b in model.named_buffers())  # running statistics are the same tensors
    assert list(model.state_dict()) == keys  # checkpoints keep the plain network's keys
    torch.testing.assert_close(model(x), before)  # in eval mode SyncBatchNorm is BatchNorm

    model, step = distributed.wrap(create_model("lenet5_modern"), torch.device("cpu"), sync_bn=False)
    assert step.device_ids is None  # gloo on CPU: DDP without device ids


def test_sync_bn_on_cpu_workers_is_refused_before_joining(monkeypatch, tmp_path, capsys):
    from cnnlab.cli import main

    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "1"}.items():  # nobody listens: had it tried to join, it would fail differently
        monkeypatch.setenv(k, v)
    assert main(["train", "resnet20", "--sync-bn", "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "--sync-bn needs GPUs (PyTorch's SyncBatchNorm does not run on CPU)" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_folder_shards_are_disjoint_reshuffled_per_epoch_and_evaluation_scores_each_image_once():
    from torch.utils.data import TensorDataset

    from cnnlab.data.folder import folder_loader

    ds = TensorDataset(torch.arange(41))
    orders = {}
    for epoch in (0, 1):
        shards = []
        for rank in (0, 1):
            loader = folder_loader(ds, 8, True, seed=7, workers=0, rank=rank, world=2)
            loader.sampler.set_epoch(epoch)  # as the trainer does at the start of every epoch
            batches = [b[0].tolist() for b in loader]
            assert len(batches) == 41 // 8 and all(len(b) == 4 for b in batches)  # per-rank half of the global batch
            shards.append([i for b in batches for i in b])
        assert not set(shards[0]) & set(shards[1]) and len(shards[0]) == len(shards[1]) == 20
        orders[epoch] = shards
    assert orders[0] != orders[1]  # a new shuffle every epoch, the same on every rank (seeded)
    again = folder_loader(ds, 8, True, seed=7, workers=0, rank=0, world=2)
    again.sampler.set_epoch(1)
    assert [i for b in again for i in b[0].tolist()] == orders[1][0]
    scored = [i for rank in (0, 1) for b in folder_loader(ds, 8, False, seed=7, workers=0, rank=rank, world=2)
              for i in b[0].tolist()]
    assert sorted(scored) == list(range(41))


IMAGENETTE = Path(os.environ.get("CNNLAB_DATA_DIR", "../shared/data")) / "imagenette-subset"


@pytest.mark.slow
@pytest.mark.skipif(not IMAGENETTE.exists(), reason="no local Imagenette subset")
def test_two_processes_on_an_image_folder_report_the_single_process_evaluation(tmp_path):
    """The DistributedSampler path: 2 workers train on real photos; the validation metrics they reduce over
    ranks must be those of one process scoring the saved weights on all 100 validation images."""
    from cnnlab.data.view import open_data
    from cnnlab.runs import open_run
    from cnnlab.platform import Platform
    from cnnlab.train.trainer import evaluate

    flags = ["lenet5_modern", "--data", f"folder:{IMAGENETTE}", "--epochs", "2", "--batch-size", "60", "--lr", "0.05",
             "--seed", "1", "--out", str(tmp_path)]
    run = subprocess.run(TORCHRUN + ["-m", "cnnlab", "train", *flags], env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()  # rank 0 alone prints, and says how the work is split
    assert lines[0].endswith(f"on cpu in 2 data-parallel processes (gloo, 30 images each); run folder {tmp_path}")
    assert sum(line.startswith("training ") for line in lines) == 1
    assert sum(line.startswith("epoch ") for line in lines) == 2
    last = _metrics(tmp_path)[-1]
    assert last["kind"] == "epoch" and last["step"] == 2 * (300 // 60)
    opened = open_run(tmp_path)
    val = open_data(opened.info.view, "val", batch_size=60, workers=0)
    assert len(val) == 100
    cpu = Platform(torch.device("cpu"), "fp32", True)
    alone = evaluate(opened.model.to(memory_format=torch.channels_last), val, cpu)
    # the same counts (a skipped or twice-scored image moves top-1 by 1 point); the loss up to summation order
    assert (last["eval_top1"], last["eval_top5"]) == (alone["top1"], alone["top5"])
    assert last["eval_loss"] == pytest.approx(alone["loss"], rel=1e-5)


def _gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.slow
@pytest.mark.skipif(_gpus() < 2, reason="needs 2 CUDA GPUs (NCCL)")
@pytest.mark.parametrize("model,extra", [("lenet5_modern", []), ("resnet20", ["--sync-bn"])])
def test_on_two_gpus_nccl_gives_the_single_gpu_weights(tmp_path, model, extra):
    """Runs only on a machine with 2+ GPUs. NCCL data parallelism (and, for the BatchNorm network, --sync-bn,
    which normalises over the global batch) gives the weights of one GPU with the same global batch."""
    flags = [model, "--epochs", "1", "--batch-size", "128", "--lr", "0.05", "--quiet", "--deterministic",
             "--seed", "3", "--train-limit", "2560", "--val-split", "0.1", "--precision", "fp64", "--device", "cuda"]
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = subprocess.run([sys.executable, "-m", "cnnlab", "train", *flags, "--out", str(one)], env=ENV,
                        capture_output=True, text=True, timeout=600)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = subprocess.run(TORCHRUN + ["-m", "cnnlab", "train", *flags, *extra, "--out", str(two)], env=ENV,
                        capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert json.loads((two / "config.json").read_text())["distributed"]["backend"] == "nccl"
    a, b = load_checkpoint(one)["model"], load_checkpoint(two)["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-9, rtol=1e-7)


@pytest.mark.slow
def test_stochastic_depth_under_ddp_equals_one_process(tmp_path):
    """Blocks skipped by stochastic depth leave parameters unused in a step. Every rank draws the same skips,
    so DDP (told to look for unused parameters) must leave their gradients None, as one process does: no
    momentum or weight-decay update for a skipped block. Without find_unused_parameters DDP stops at the
    step after the first skip."""
    worker = str(Path(__file__).with_name("ddp_skip_worker.py"))
    one = subprocess.run([sys.executable, worker, str(tmp_path / "one.pt")], env=ENV, capture_output=True,
                         text=True, timeout=120)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(TORCHRUN + [worker, str(tmp_path / "two.pt")], env=ENV, capture_output=True, text=True,
                         timeout=120)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (torch.load(tmp_path / f, weights_only=True) for f in ("one.pt", "two.pt"))
    assert a["skipped"] == b["skipped"] and any(any(s) for s in a["skipped"])  # the same blocks skipped
    for k in a["state"]:
        torch.testing.assert_close(b["state"][k], a["state"][k], atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("name,options,skips", [
    ("resnet20", {}, False), ("resnet20", {"drop_path_rate": 0.2}, True), ("resnet110_sd", {}, True),
    ("resnet18", {"drop_path_rate": 0.1}, True), ("plain20", {}, False), ("fractalnet20", {}, True),
    ("fractalnet20", {"drop_path": False}, False), ("fractalnet20", {"drop_path": False, "column": 0}, True),
    ("googlenet", {}, False), ("vgg_cifar", {}, False),
])
def test_ddp_looks_for_unused_parameters_exactly_in_models_that_skip_branches(monkeypatch, name, options, skips):
    import torch.nn.parallel

    from cnnlab.models import create_model
    from cnnlab.train import distributed

    seen = {}

    class FakeDDP(torch.nn.Module):
        def __init__(self, module, device_ids=None, find_unused_parameters=False):
            super().__init__()
            seen["find_unused_parameters"] = find_unused_parameters

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", FakeDDP)
    with torch.device("meta"):
        model = create_model(name, **options)
    distributed.wrap(model, torch.device("cpu"), sync_bn=False)
    assert seen["find_unused_parameters"] is skips


def test_the_nproc_launcher_runs_standalone_torchrun_on_loopback(monkeypatch):
    import torch.distributed as tdist
    import torch.distributed.run
    from torch.distributed.elastic.rendezvous import c10d_rendezvous_backend

    from cnnlab.train import distributed, torchrun_local

    called = []
    monkeypatch.setattr(torch.distributed.run, "main", lambda argv: called.append(argv))
    monkeypatch.setattr(tdist, "TCPStore", tdist.TCPStore)  # restored after the test
    monkeypatch.setattr(c10d_rendezvous_backend, "TCPStore", c10d_rendezvous_backend.TCPStore)
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "ib0")  # the user's own choice stands
    torchrun_local.main(["--nproc-per-node=2", "-m", "cnnlab", "train", "lenet5"])
    assert called == [["--standalone", "--local-addr", "127.0.0.1", "--nproc-per-node=2", "-m", "cnnlab", "train",
                       "lenet5"]]
    assert tdist.TCPStore is c10d_rendezvous_backend.TCPStore is distributed.LoopbackTCPStore
    assert distributed.loopback_interface() in ("lo", "lo0")  # Linux, macOS/BSD
    assert os.environ["GLOO_SOCKET_IFNAME"] == distributed.loopback_interface()
    assert os.environ["NCCL_SOCKET_IFNAME"] == "ib0"
    cmd = distributed.torchrun_command(3, ["train", "x"], max_restarts=1)
    assert cmd[1:] == ["-m", "cnnlab.train.torchrun_local", "--nproc-per-node=3", "--max-restarts=1", "-m", "cnnlab",
                       "train", "x"]


def test_nproc_workers_share_the_cores_instead_of_one_thread_each(monkeypatch):
    from cnnlab.train import distributed

    calls = []
    monkeypatch.setattr(distributed.subprocess, "call", lambda cmd, env: calls.append(env) or 0)
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert distributed.launch(2, ["train", "x"]) == 0 and calls[-1]["OMP_NUM_THREADS"] == "4"
    assert distributed.launch(16, ["train", "x"]) == 0 and calls[-1]["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice stands
    assert distributed.launch(2, ["train", "x"]) == 0 and calls[-1]["OMP_NUM_THREADS"] == "3"


def test_ranks_agree_on_a_fresh_prefix_despite_stale_keys_and_different_restart_counts():
    """The agent's store outlives the workers: it still holds a dead generation's session and answers. Rank 1
    (its node restarted after a failure: count 1) and rank 0 (a healthy node restarted for the new round:
    count 0) must still agree on a new prefix, and both learn that the job was restarted."""
    import threading
    from datetime import timedelta

    import torch.distributed as tdist

    from cnnlab.train import distributed

    port = _free_port()
    server = tdist.TCPStore("127.0.0.1", port, 3, True, timedelta(seconds=20), wait_for_workers=False)
    for key, value in {"cnnlab/session": "old", "cnnlab/ack/1": "x:old:0", "cnnlab/confirm/1": "x:old:0"}.items():
        server.set(key, value)
    results = {}

    def join(rank, restarts):
        store = tdist.TCPStore("127.0.0.1", port, 3, False, timedelta(seconds=20))
        results[rank] = distributed.fresh_prefix(store, rank, 2, 20, restarts)

    threads = [threading.Thread(target=join, args=(r, c)) for r, c in ((1, 1), (0, 0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results[0] == results[1] and results[0][1] == 1
    assert results[0][0].startswith("cnnlab/") and results[0][0] != "cnnlab/old"


@pytest.mark.slow
def test_two_nodes_survive_a_lost_worker_and_match_an_uninterrupted_run(double, tmp_path):
    """Two torchrun agents ("nodes", one worker each) meet at a c10d rendezvous at 127.0.0.1, as
    docs/distributed.md tells users to start them on two machines, and train as one job of world size 2.
    With --max-restarts 1 the worker of one node is killed in epoch 2. Its agent restarts it
    (restart count 1); the other node's agent restarts its worker for the new rendezvous round (restart count
    0, or 1 if that worker failed on the broken connection first). All workers must agree that the job
    resumes from last.pt: the result is the uninterrupted run's, bit for bit, and metrics.jsonl has no step
    lost or repeated."""
    two, _ = double
    port, out = _free_port(), tmp_path / "run"
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node",
                               "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                               "--rdzv-id", "cnnlab-lost-worker", "--rdzv-conf", f"join_timeout=60,is_host={host}",
                               "--max-restarts", "1", "-m", "cnnlab", "train", *FLAGS, "--out", str(out)],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for host in ("true", "false")]
    deadline, victim = time.time() + 240, None
    while time.time() < deadline and all(p.poll() is None for p in procs):
        m = out / "metrics.jsonl"
        if m.exists() and any(json.loads(l)["epoch"] == 2 for l in m.read_text().splitlines() if l.endswith("}")):
            victim = next((w for p in procs for w in _children(p.pid) if _rank_of(w) == 1), None)
            break
        time.sleep(0.02)
    assert victim is not None, "never saw the workers in epoch 2"
    os.kill(victim, signal.SIGKILL)
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    a, b = load_checkpoint(two)["model"], load_checkpoint(out)["model"]
    assert load_checkpoint(out)["epoch"] == 2 and all(torch.equal(a[k], b[k]) for k in a)
    untimed = lambda run: [{k: v for k, v in m.items() if k not in ("images_per_s", "seconds", "elapsed")}
                           for m in _metrics(run)]
    assert untimed(out) == untimed(two)
    assert json.loads((out / "config.json").read_text())["distributed"]["world_size"] == 2
    assert sum(bool(stdout.strip()) for stdout, _ in results) == 1  # --quiet: the run folder, from one node
