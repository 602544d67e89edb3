"""What the side-by-side benchmarks share (cifar_throughput.py, gpu_check.py): each side runs as a process of
its own under a time limit; cnnlab's steady training rate is read from its run's metrics.jsonl, the peer's from
the figures it writes.

cnnlab's rate: ``cnnlab train MODEL --data cifar10_jpeg --epochs 1`` on just enough training images
(``--train-limit``, with 10% held out for the end-of-epoch evaluation, so that it is short) logs a step line
every ``--log-every`` steps with the images/s since the start of the epoch. Step k then ended
k x batch / ips_k seconds after the epoch started, and the rate between step lines a and b is
(b - a) x batch / (elapsed_b - elapsed_a): steps before a (start-up, the first allocations, oneDNN's or
cuDNN's choice of kernels) are left out, as the peer leaves out its warm-up steps.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cnnlab.fileio import read_jsonl

PEERS = Path(__file__).resolve().parent / "peers"
VAL_SPLIT = 0.1  # held out of cnnlab's training images: its end-of-epoch evaluation stays short


@dataclass
class Ran:
    """A process run to its end or to its time limit."""

    cmd: list[str]
    rc: int | None  # None: killed at the time limit
    seconds: float  # from its start to its exit
    stdout: str
    stderr: str
    limit_s: float | None

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def why(self) -> str:
        return f"timed out after {self.limit_s:.0f} s" if self.rc is None else f"exit status {self.rc}"

    def tail(self, n: int = 15) -> str:
        lines = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return "\n".join(lines[-n:])


def run(cmd: list, limit_s: float | None = None) -> Ran:
    """Run ``cmd`` in a session of its own; at the time limit the whole session (the process and, say, its
    DataLoader workers) is killed."""
    cmd = [str(c) for c in cmd]
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=limit_s)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        rc = None
    return Ran(cmd, rc, time.perf_counter() - t, out, err, limit_s)


def outcome(ran: Ran) -> dict:
    """What every record of a measurement says: its status, its seconds, its command, and what went wrong."""
    rec = {"status": "ok" if ran.ok else ("timed out" if ran.rc is None else "failed"), "seconds": ran.seconds,
           "limit_s": ran.limit_s, "command": shlex.join(ran.cmd)}
    if not ran.ok:
        rec["error"] = ran.why()
        rec["stderr_tail"] = ran.tail()
    return rec


def failed(rec: dict, error: str) -> dict:
    return {**rec, "status": "failed", "error": error}


def train_limit_for(steps: int, batch: int) -> int:
    """Training images that give at least ``steps`` + 1 full batches after cnnlab holds out VAL_SPLIT of them
    (class-stratified, so a few images either way)."""
    return math.ceil((steps + 1) * batch / (1 - VAL_SPLIT)) + 20


def steady_rate(records: list[dict], batch: int, first: int, last: int) -> float:
    """Images/s between the step lines ``first`` and ``last`` of the first epoch."""
    ips = {r["step"]: r["images_per_s"] for r in records if r.get("kind") == "step" and r.get("epoch") == 1}
    for k in (first, last):
        if k not in ips:
            raise ValueError(f"metrics.jsonl has no step line {k} (it has {sorted(ips)[:3]}...{sorted(ips)[-3:]})")
    elapsed = {k: k * batch / ips[k] for k in (first, last)}
    return (last - first) * batch / (elapsed[last] - elapsed[first])


def cnnlab_rate(model: str, *, device: str, batch: int, skip: int, steps: int, log_every: int,
                extra: list[str] = (), data_dir: str | None = None, limit_s: float | None = None) -> dict:
    """cnnlab's training images/s over steps ``skip`` .. ``skip + steps`` of ``cnnlab train MODEL``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "cnnlab", "train", model, "--data", "cifar10_jpeg", "--epochs", 1,
               "--batch-size", batch, "--train-limit", train_limit_for(skip + steps, batch), "--val-split",
               VAL_SPLIT, "--out", out, "--health-every", 0, "--no-snapshots", "--log-every", log_every,
               "--quiet", "--device", device, *(["--data-dir", data_dir] if data_dir else []), *extra]
        ran = run(cmd, limit_s)
        rec = outcome(ran)
        if not ran.ok:
            return rec
        try:
            rec["images_per_s"] = steady_rate(read_jsonl(out / "metrics.jsonl"), batch, skip, skip + steps)
            config = json.loads((out / "config.json").read_text())
        except (ValueError, OSError, KeyError, ZeroDivisionError) as e:
            return failed(rec, f"its run folder did not give a rate: {e}")
        rec.update(precision=config["precision"], channels_last=config["channels_last"],
                   macs_per_image=config["macs_per_image"], steps=steps, after=skip, batch=batch)
        return rec


def peer_rate(model: str, *, device: str, batch: int, warmup: int, steps: int, workers: int,
              data_dir: str | None = None, train_limit: int = 0, limit_s: float | None = None) -> dict:
    """The akamaster peer's training images/s over ``steps`` steps after ``warmup`` untimed ones."""
    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp) / "peer.json"
        cmd = [sys.executable, PEERS / "akamaster_cifar.py", "--model", model, "--device", device, "--batch", batch,
               "--warmup", warmup, "--steps", steps, "--workers", workers, "--json", figures,
               *(["--data-dir", data_dir] if data_dir else []),
               *(["--train-limit", train_limit] if train_limit else [])]
        ran = run(cmd, limit_s)
        rec = outcome(ran)
        if not ran.ok:
            return rec
        try:
            got = json.loads(figures.read_text())
        except (OSError, ValueError) as e:
            return failed(rec, f"it wrote no figures: {e}")
        rec.update({k: got[k] for k in ("images_per_s", "decode_seconds", "data", "workers")},
                   steps=steps, after=warmup, batch=batch, precision="fp32", channels_last=False)
        return rec


def mnist_folder(root: Path, images: tuple[int, int] | None = None) -> Path:
    """MNIST's raw files as torchvision's download leaves them (ROOT/MNIST/raw/, decompressed), written from
    cnnlab's own copy for the peers' ``datasets.MNIST``; with ``images``, only the first (train, test) images
    of each split."""
    from cnnlab.data.sources import EMBEDDED

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in sorted((EMBEDDED / "mnist").glob("*.gz")):
        data = gzip.decompress(f.read_bytes())
        if images:
            n = images[0] if f.name.startswith("train") else images[1]
            head = 16 if "images" in f.name else 8
            size = (len(data) - head) // int.from_bytes(data[4:8], "big")
            data = data[:4] + n.to_bytes(4, "big") + data[8:head] + data[head:head + n * size]
        (raw / f.name.removesuffix(".gz")).write_bytes(data)
    return root
