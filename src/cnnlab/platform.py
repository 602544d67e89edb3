"""The platform a run trains on: the device, the precision (with a measured bf16 probe on CPUs), the memory
layout, the allocator, and a record of the hardware and versions that a result was measured on.

Why each default is what it is, with the measurements: docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_write_json


@dataclass(frozen=True)
class Platform:
    """Where and how a run computes: the device, the precision ("fp32", "bf16", "fp16" autocast, or "fp64"
    weights and inputs) and the memory layout."""

    device: torch.device
    precision: str
    channels_last: bool

    @classmethod
    def choose(cls, device: str, precision: str, channels_last: bool | None, local_rank: int | None = None) -> Platform:
        """The device and layout; the precision is settled by :meth:`for_network` once the network's cost is
        known (the layout is needed before: on a CPU it does not depend on the precision, and on a GPU the
        precision does not depend on the network). Checks ``precision`` early."""
        dev = resolve_device(device)
        if dev.type == "cuda" and local_rank is not None:  # data parallel: one GPU per process
            dev = torch.device("cuda", local_rank)
        early = resolve_precision(precision, dev, 0)
        return cls(dev, precision, resolve_channels_last(channels_last, early, dev))

    def for_network(self, macs_per_image: int, deterministic: bool = False) -> Platform:
        auto = self.precision == "auto"
        chosen = "fp32" if deterministic and auto else resolve_precision(self.precision, self.device, macs_per_image)
        return replace(self, precision=chosen)

    @property
    def dtype(self) -> torch.dtype | None:
        """The dtype inputs and weights are cast to (fp64 only; autocast handles bf16/fp16)."""
        return torch.float64 if self.precision == "fp64" else None

    def autocast(self):
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        return torch.autocast(self.device.type, dtype=amp) if amp else nullcontext()

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        if self.dtype:
            model = model.to(self.dtype)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def describe(self) -> str:
        return f"{self.precision}{' channels-last' if self.channels_last else ''} on {self.device}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise CnnlabError(f"`device` must be cpu, cuda or auto, got {name!r}", params=("device",))
    if name == "cuda" and not torch.cuda.is_available():
        raise CnnlabError("`device` cuda was asked for but no CUDA GPU is visible; use `device` cpu",
                          params=("device",))
    return torch.device(name)


def cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def cpu_has_amx() -> bool:
    """Whether the CPU has AMX bf16 tiles (Linux: the amx_bf16 flag in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in f)
    except OSError:
        return False


BF16_MIN_SPEEDUP = 1.3  # bf16 autocast must beat fp32 by this much on the probe convolution to be chosen
BF16_MIN_MACS = 10_000_000  # and the network big enough for its convolutions to dominate a step (LeNet-5: 0.4M)


def resolve_precision(precision: str, device: torch.device, macs_per_image: int) -> str:
    """'auto': on CUDA bf16 where supported, else fp16. On a CPU bf16 autocast (channels-last) where it pays:
    for networks of at least 10M multiply-adds per image (resnet20 has 41M, vgg_cifar 153M), on CPUs with AMX
    tiles or where a probe convolution runs at least 1.3x faster in bf16 than in fp32 (``cpu_bf16_speedup``,
    measured once per machine): CPUs differ too much for a fixed rule (docs/benchmarks.md, "How the
    defaults are chosen"); LeNet-5 stays in fp32 everywhere."""
    if precision not in ("auto", "fp32", "bf16", "fp16", "fp64"):
        raise CnnlabError(f"`precision` must be fp32, bf16, fp16, fp64 or auto, got {precision!r}",
                          params=("precision",))
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise CnnlabError("`precision` fp16 needs a GPU; on CPU use bf16 or fp32", params=("precision",))
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if macs_per_image < BF16_MIN_MACS:
        return "fp32"
    return "bf16" if cpu_has_amx() or cpu_bf16_speedup() >= BF16_MIN_SPEEDUP else "fp32"


def cpu_bf16_speedup() -> float:
    """How many times faster this CPU trains a 3x3 convolution (64 -> 64 channels, 32x32, batch 32, forward
    and backward, channels-last) under bf16 autocast than in fp32; 0 where oneDNN has no bf16. Measured once
    per CPU model, torch version and thread count (about a second), then read from
    ``<cache>/cnnlab/cpu_bf16.json``."""
    if not cpu_has_bf16():
        return 0.0
    from cnnlab.data.sources import cache_root

    key = f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads"
    path = cache_root() / "cpu_bf16.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):  # edited by hand into something else
        known = {}
    if not isinstance(known.get(key), (int, float)):
        known[key] = round(_measure_bf16_speedup(), 3)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, known)
        except OSError:
            pass  # a read-only cache: measure again next time
    return float(known[key])


def _measure_bf16_speedup(runs: int = 5) -> float:
    g = torch.Generator().manual_seed(0)  # not torch's global generator: a run's draws must not depend on
    # whether this machine had measured already
    x = torch.randn(32, 64, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 64, 3, 3, generator=g).requires_grad_()

    def best(bf16: bool) -> float:
        times = []
        for _ in range(runs + 1):  # the first is a warm-up
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = F.conv2d(x, w, padding=1)
            y.float().sum().backward()
            times.append(time.perf_counter() - t)
        return min(times[1:])

    fp32, bf16 = best(False), best(True)
    fp32 = min(fp32, best(False))  # interleaved, so a slow spell of the machine does not favour one side
    return fp32 / bf16


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_channels_last(channels_last: bool | None, precision: str, device: torch.device) -> bool:
    """``None`` (neither asked for nor refused): channels-last on a CPU in every precision, where oneDNN's
    convolutions run faster on it (measured: docs/benchmarks.md, "How the defaults are chosen"); on a GPU with
    bf16/fp16, where tensor cores want it."""
    if channels_last is not None:
        return channels_last
    return device.type == "cpu" or precision in ("bf16", "fp16")


class ThreadShare:
    """Fits torch's thread count to the cores other processes leave free, while a run trains (CPU only).

    torch runs each operation on a team of threads that all wait for the slowest; with one other busy process
    on a 2-core machine, one of the two threads shares its core, and every operation waits on it for the time
    slices the scheduler gives the other process (measured in docs/benchmarks.md, "On a busy machine"). So
    every ``every`` seconds :meth:`poll` reads how much CPU the rest of the machine used since the last poll
    (``/proc/stat`` less this process's own ``/proc/self/stat``) and sets the threads to the cores left,
    rounded, between 1 and the count the run started with. Linux only; elsewhere, in deterministic runs (a
    thread count can change the order of a sum), with one thread and with ``CNNLAB_FIT_THREADS=0`` in the
    environment it does nothing."""

    def __init__(self, enabled: bool = True, every: float = 2.0):
        self.base = torch.get_num_threads()
        self.every = every
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.enabled = enabled and self.base > 1 and sys.platform.startswith("linux") \
            and os.environ.get("CNNLAB_FIT_THREADS", "1") != "0"
        self.threads = self.base
        self.others = 0.0  # cores' worth of CPU the other processes used in the last window
        self._last = self._read() if self.enabled else None

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        """(wall seconds, CPU seconds used by every process, CPU seconds used by this one)."""
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()[1:]
            with open("/proc/self/stat") as f:
                mine = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        busy = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4))  # all but idle and iowait
        return time.monotonic(), busy / tick, (int(mine[11]) + int(mine[12])) / tick  # utime + stime

    def poll(self) -> int:
        """The thread count to use now (set in torch when it changes)."""
        if not self.enabled or self._last is None:
            return self.threads
        now = time.monotonic()
        if now - self._last[0] < self.every:
            return self.threads
        reading = self._read()
        if reading is None:
            self.enabled = False
            return self.threads
        wall, busy, mine = (b - a for a, b in zip(self._last, reading))
        self._last = reading
        self.others = max(0.0, (busy - mine) / max(wall, 1e-6))
        want = max(1, min(self.base, round(min(self.cores, self.base) - self.others)))
        if want != self.threads:
            torch.set_num_threads(want)
            self.threads = want
        return self.threads

    def restore(self) -> None:
        if self.threads != self.base:
            torch.set_num_threads(self.base)
            self.threads = self.base


_MALLOC_TUNED = [False]


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep the memory a training step frees for the next step (mallopt: blocks up to
    32 MiB come from the heap rather than fresh mmaps, and the heap is trimmed only above 1 GiB free).

    With its defaults glibc often hands freed activations of more than 128 KiB back to the kernel, and the
    next step pays a page fault for each 4 KiB page it touches again (the page faults and seconds saved:
    docs/benchmarks.md). It does what the tcmalloc or jemalloc preload advised by Intel's PyTorch tuning
    guides does, without a preload. Process-wide and idempotent; returns whether it applied (glibc on Linux
    only; elsewhere nothing changes)."""
    if _MALLOC_TUNED[0]:
        return True
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl or another libc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    _MALLOC_TUNED[0] = bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))
    return _MALLOC_TUNED[0]


def hardware(device: torch.device = torch.device("cpu")) -> dict:
    """What a result was measured on (run folders and benchmarks both record it)."""
    hw = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
          "python": sys.version.split()[0], "torch": torch.__version__, "cpu_count": os.cpu_count(),
          "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        hw["gpu"] = torch.cuda.get_device_name(device)
    else:
        hw["cpu_model"], hw["cpu_bf16"], hw["cpu_amx"] = cpu_model(), cpu_has_bf16(), cpu_has_amx()
    return hw


def cnnlab_version() -> str:
    from cnnlab import __version__
    return __version__


def torchvision_version() -> str:
    from importlib.metadata import version  # importing torchvision itself costs 1-3 s

    return version("torchvision")


def versions() -> dict:
    return {"cnnlab": cnnlab_version(), "torch": torch.__version__, "torchvision": torchvision_version()}
