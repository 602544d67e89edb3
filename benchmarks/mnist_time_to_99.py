"""Time to 99.0% MNIST test accuracy, from the start of the process: cnnlab against the loop people write.

    python benchmarks/mnist_time_to_99.py [--models lenet5 lenet5_modern] [--runs 3] [--max-epochs 15]

Every side is its own process, started by this script and timed from its start (interpreter, imports, data
decoding, every epoch, the evaluations) until it prints a test top-1 of 99.0% or more:

* the peer, ``benchmarks/peers/lecture_mnist.py``: the lecture's LeNet-5 (ReLU, max-pooling, linear output),
  torchvision ``datasets.MNIST`` with ``Pad(2)``, ``ToTensor``, ``Normalize(0.1307, 0.3081)``, a shuffled
  ``DataLoader`` of batch 64 with no workers, SGD lr 0.01 momentum 0.9, fp32, the test set after every epoch;
  it reads the official files that torchvision would have downloaded (decompressed before the clock starts);
* ``cnnlab train MODEL`` for each model asked for, with its default recipe (the main job is
  ``cnnlab train lenet5``), in a fresh temporary run folder; its decoded-MNIST cache is warm, as it is from
  the second run on for every user (the first decode adds about 0.6 s).

Runs are interleaved (peer, cnnlab models, peer, ...) with seeds 0, 1, 2, ... on both sides. Prints each run,
then each side's median (min-max) and the ratio of medians peer / cnnlab. A side that never reaches 99.0%
within --max-epochs counts as "not reached" and its time is a lower bound.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from side_by_side import mnist_folder

HERE = Path(__file__).resolve().parent
ACCURACY = re.compile(r"(?:test top-1|top-1) ([0-9.]+)%")


def timed_until(cmd: list[str], target: float, env: dict | None = None) -> tuple[float, int | None, float]:
    """Start ``cmd`` and read its output line by line until a line reports a test top-1 of ``target``% or
    more: (seconds from the start, the epoch, that accuracy); (seconds to its end, None, best) if none does."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    epoch, best = 0, 0.0
    for line in proc.stdout:
        if not line.startswith("epoch"):
            continue
        epoch += 1
        top1 = float(ACCURACY.search(line).group(1))
        best = max(best, top1)
        if top1 >= target:
            seconds = time.perf_counter() - start
            proc.kill()
            proc.wait()
            return seconds, epoch, top1
    proc.wait()
    return time.perf_counter() - start, None, best


def describe(runs: list[tuple[float, int | None, float]]) -> str:
    secs = [t for t, _, _ in runs]
    reached = all(e is not None for _, e, _ in runs)
    return (f"{'' if reached else '> '}{statistics.median(secs):.1f} s ({min(secs):.1f}-{max(secs):.1f}); "
            f"epochs {[e for _, e, _ in runs]}")


def main() -> None:
    from cnnlab.platform import hardware

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["lenet5", "lenet5_modern"])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--max-epochs", type=int, default=15)
    p.add_argument("--target", type=float, default=99.0)
    args = p.parse_args()
    print(f"# MNIST time to {args.target}% test top-1 from process start; {args.runs} runs each, interleaved")
    print("# " + ", ".join(f"{k} {v}" for k, v in hardware().items()))
    results: dict[str, list] = {"peer": [], **{m: [] for m in args.models}}
    with tempfile.TemporaryDirectory() as tmp:
        mnist_folder(Path(tmp))  # what torchvision's download leaves: the decompressed files
        for i in range(args.runs):
            peer = [sys.executable, str(HERE / "peers" / "lecture_mnist.py"), tmp, "--seed", str(i),
                    "--epochs", str(args.max_epochs), "--stop-at", str(args.target)]
            results["peer"].append(timed_until(peer, args.target))
            print(f"run {i + 1}: peer (lecture loop) {results['peer'][-1][0]:6.1f} s, epoch {results['peer'][-1][1]}",
                  flush=True)
            for m in args.models:
                out = Path(tmp, f"run-{m}-{i}")
                cmd = [sys.executable, "-m", "cnnlab", "train", m, "--seed", str(i), "--out", str(out)]
                results[m].append(timed_until(cmd, args.target, env={**os.environ, "COLUMNS": "200"}))
                print(f"run {i + 1}: cnnlab train {m:14s} {results[m][-1][0]:6.1f} s, epoch {results[m][-1][1]} "
                      f"({results[m][-1][2]:.2f}%)", flush=True)
    print()
    for side, runs in results.items():
        print(f"{side:14s} {describe(runs)}")
    peer = statistics.median(t for t, _, _ in results["peer"])
    for m in args.models:
        print(f"peer / cnnlab train {m}: {peer / statistics.median(t for t, _, _ in results[m]):.1f}x")


if __name__ == "__main__":
    main()
