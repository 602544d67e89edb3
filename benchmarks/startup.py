"""Start-up time of the `cnnlab` commands that only list or compute numbers, beside what a user pays anyway:
Python itself (`python -c pass`), `import torch` and `import torchvision`; and `import torch._dynamo`, which
torch imports by itself the first time a TorchDispatchMode dispatches an operation or an elementwise operation
runs on the meta device (both call `torch._disable_dynamo`): `cnnlab summary` does both, to count a network
without allocating it.

    python benchmarks/startup.py [--runs 7] [--src src] [--before OLD/src] [--json FILE]

Each command runs as a fresh process (`python -m cnnlab ...`, as the `cnnlab` script runs it) with cnnlab
imported from --src, timed from start to exit, output discarded; with --before, the same commands run from
another source tree too (e.g. `git worktree add /tmp/old HEAD~3`, then `--before /tmp/old/src`), so that an
earlier version is measured beside this one under the same conditions. Everything is run round-robin (one of
each, then the next round), so a burst of load from other jobs on the machine lands on all of them rather
than on one. Each figure is the median of --runs runs with the min-max spread, in seconds, after one warm-up
run of each; bytecode caching is on (PYTHONDONTWRITEBYTECODE is removed), as in an installed package. One
more run of each under ``python -X importtime`` says whether it imported torch and torchvision.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib.metadata import version

REFERENCES = [
    ("python -c pass", ["-c", "pass"]),
    ('python -c "import torch"', ["-c", "import torch"]),
    # what torch imports when a TorchDispatchMode first dispatches, or a meta tensor first meets a Python kernel
    ('python -c "import torch._dynamo"', ["-c", "import torch._dynamo"]),
    ('python -c "import torchvision"', ["-c", "import torchvision"]),
]
COMMANDS = [
    ("cnnlab models", ["-m", "cnnlab", "models"]),
    ("cnnlab card lenet5", ["-m", "cnnlab", "card", "lenet5"]),
    ("cnnlab calc conv --input 227x227x3 --filters 96 --kernel 11 --stride 4",
     ["-m", "cnnlab", "calc", "conv", "--input", "227x227x3", "--filters", "96", "--kernel", "11", "--stride", "4"]),
    ("cnnlab calc rf conv3*3 pool2", ["-m", "cnnlab", "calc", "rf", "conv3*3", "pool2"]),
    ("cnnlab summary lenet5", ["-m", "cnnlab", "summary", "lenet5"]),
]


def environment(src: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
    if src:
        env["PYTHONPATH"] = os.path.abspath(src)
    return env


def run_once(args: list[str], env: dict) -> float:
    t = time.perf_counter()
    done = subprocess.run([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    elapsed = time.perf_counter() - t
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return elapsed


def imported(args: list[str], env: dict) -> list[str]:
    """Which of torch and torchvision the command imports, from ``-X importtime``'s report."""
    done = subprocess.run([sys.executable, "-X", "importtime", *args], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env=env)
    names = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return [m for m in ("torch", "torchvision") if m in names]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--src", default=os.path.join(os.path.dirname(__file__), "..", "src"),
                   help="the source tree whose cnnlab is measured (default: this checkout's src/)")
    p.add_argument("--before", help="an earlier source tree, measured beside it")
    p.add_argument("--json", help="also write the timings to this file")
    args = p.parse_args()
    trees = [("", args.src)] + ([(" (before)", args.before)] if args.before else [])
    cases = [(label, argv, environment(None)) for label, argv in REFERENCES]
    cases += [(label + tag, argv, environment(src)) for label, argv in COMMANDS for tag, src in trees]
    load = os.getloadavg()[0]
    for label, argv, env in cases:  # warm-up: the file cache, and the bytecode of cnnlab's modules
        run_once(argv, env)
    times: dict[str, list[float]] = {label: [] for label, _, _ in cases}
    for _ in range(args.runs):
        for label, argv, env in cases:
            times[label].append(run_once(argv, env))
    print(f"# start-up time in seconds: median of {args.runs} runs (min-max), round-robin, after a warm-up run")
    print(f"# {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {version('torch')}, "
          f"torchvision {version('torchvision')}; load average {load:.2f} before, {os.getloadavg()[0]:.2f} after")
    base = statistics.median(times["python -c pass"])
    width = max(len(label) for label in times)
    print(f"{'command':<{width}} {'median':>7}  {'min-max':<11} {'- python':>8}  imports")
    for label, argv, env in cases:
        t = times[label]
        med = statistics.median(t)
        mods = ", ".join(imported(argv, env)) or "neither torch nor torchvision"
        print(f"{label:<{width}} {med:7.2f}  {min(t):5.2f}-{max(t):<5.2f} {med - base:+8.2f}  {mods}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": args.runs, "load_before": load, "load_after": os.getloadavg()[0], "times": times}, f,
                      indent=2)


if __name__ == "__main__":
    main()
