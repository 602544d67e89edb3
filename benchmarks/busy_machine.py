"""One MNIST epoch on a quiet machine and beside one busy process (a ``while True: pass``), for cnnlab and
for the loop people write, side by side: how much each slows when another program takes a core.

    python benchmarks/busy_machine.py [--runs 3] [--variants fit,fixed,passive]

Sides (each its own process, one training epoch, the training loop's own seconds):

* ``plain``: ``benchmarks/peers/lecture_mnist.py`` (torchvision MNIST, DataLoader 64, SGD), its "train" time;
* ``cnnlab``: ``cnnlab train lenet5 --epochs 1`` as shipped (threads fitted to the free cores), the
  ``seconds`` of metrics.jsonl's epoch line;
* variants of cnnlab: ``fixed`` (``CNNLAB_FIT_THREADS=0``: torch's threads stay at the core count, as
  before), ``passive`` (fixed threads and ``OMP_WAIT_POLICY=PASSIVE``: waiting threads sleep instead of
  spinning), ``one`` (``OMP_NUM_THREADS=1``).

Quiet and busy runs alternate; the busy process is started before the run and killed after it. Prints each
side's median (min-max) epoch seconds quiet and busy, and the slowdown busy / quiet.
"""

from __future__ import annotations

import argparse
import json
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
VARIANTS = {"fit": {}, "fixed": {"CNNLAB_FIT_THREADS": "0"},
            "passive": {"CNNLAB_FIT_THREADS": "0", "OMP_WAIT_POLICY": "PASSIVE"}, "one": {"OMP_NUM_THREADS": "1"}}


def plain_epoch(root: Path) -> float:
    out = subprocess.run([sys.executable, str(HERE / "peers" / "lecture_mnist.py"), str(root), "--epochs", "1"],
                         capture_output=True, text=True, check=True).stdout
    return float(re.search(r"train ([0-9.]+)s", out).group(1))


def cnnlab_epoch(variant: str, model: str) -> tuple[float, float]:
    env = {**os.environ, **VARIANTS[variant]}
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "cnnlab", "train", model, "--epochs", "1", "--quiet", "--out", out,
                        "--overwrite"], env=env, check=True, capture_output=True)
        line = [json.loads(x) for x in Path(out, "metrics.jsonl").read_text().splitlines() if '"epoch"' in x][-1]
        return line["seconds"], line.get("threads", float("nan"))


class Busy:
    """One other process that keeps a core busy for as long as the block runs."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if self.on else None
        time.sleep(0.5 if self.on else 0)
        return self

    def __exit__(self, *exc):
        if self.proc:
            self.proc.kill()
            self.proc.wait()


def main() -> None:
    from cnnlab.platform import hardware

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--model", default="lenet5")
    p.add_argument("--variants", default="fit,fixed", help=f"cnnlab variants among {', '.join(VARIANTS)}")
    p.add_argument("--no-plain", action="store_true")
    args = p.parse_args()
    sides = ([] if args.no_plain else ["plain"]) + [f"cnnlab-{v}" for v in args.variants.split(",")]
    print(f"# one MNIST epoch, quiet and beside one busy process; {args.model}; {args.runs} runs, alternating")
    print("# " + ", ".join(f"{k} {v}" for k, v in hardware().items()))
    times: dict[tuple[str, bool], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = mnist_folder(Path(tmp))
        for r in range(args.runs):
            for busy in (False, True):
                for side in sides:
                    with Busy(busy):
                        if side == "plain":
                            sec, threads = plain_epoch(root), float("nan")
                        else:
                            sec, threads = cnnlab_epoch(side.split("-", 1)[1], args.model)
                    times.setdefault((side, busy), []).append(sec)
                    print(f"run {r + 1} {'busy ' if busy else 'quiet'} {side:15s} {sec:6.2f} s  threads {threads}",
                          flush=True)
    print("\n| side | quiet s | busy s | busy / quiet |\n|---|---:|---:|---:|")
    for side in sides:
        q, b = times[(side, False)], times[(side, True)]
        print(f"| {side} | {statistics.median(q):.2f} ({min(q):.2f}-{max(q):.2f}) | {statistics.median(b):.2f} "
              f"({min(b):.2f}-{max(b):.2f}) | {statistics.median(b) / statistics.median(q):.2f}x |")


if __name__ == "__main__":
    main()
