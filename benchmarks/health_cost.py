"""What watching a run costs: `cnnlab train` with the health records and snapshots at their defaults (health
every 50 steps; snapshots at steps 0, 10, 20, 50, 100, 200, ..., every quarter epoch and each epoch's end) against
the same run with both off (`--health-every 0 --no-snapshots`), side by side.

    python benchmarks/health_cost.py [--runs 3] [--device cpu] [--cases lenet5 resnet20]

Cases: LeNet-5 one epoch on all of MNIST (469 steps of 128); ResNet-20 one epoch on 10,000 CIFAR-10 JPEG
training images (78 steps of 128: the quarter-epoch snapshots are then 5 times as dense per image as on the
full 50,000, so the figure overstates a real run's cost). The runs alternate on, off, on, off, ... so that a
drift of the machine falls on both. Two figures per run: the training loop's images/s (metrics.jsonl's epoch
line: every step with its health records and the snapshots inside the epoch), and the wall time of the whole
`train()` call (data, evaluation with the confusion matrix, the epoch's snapshot, checkpoints). Median and
min-max of --runs runs each; the cost is the median's relative loss.

On a shared machine other processes make those A/B figures swing more than the cost itself, so each run with
the watch on also times the watch's own code (every call the trainer makes into it, the ReLU hooks, the
confusion counting, its setup) and reports it as a share of the same run's loop time and wall time: a figure
that contention inflates on both sides of the ratio alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import cnnlab.train.trainer as trainer
from cnnlab.platform import hardware, versions
from cnnlab.train import train
from cnnlab.train.watch import Watch

CASES = {
    "lenet5": dict(model="lenet5", epochs=1),
    "resnet20": dict(model="resnet20", data="cifar10_jpeg", epochs=1, train_limit=10_000),
}
ON = dict(health_every=50, snapshots=True)
OFF = dict(health_every=0, snapshots=False)
SPENT = {"loop": 0.0, "all": 0.0}  # seconds inside the watch's code: in the training loop, and in all


def _timed(fn, *where):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            for w in where:
                SPENT[w] += time.perf_counter() - t
    return wrapper


def instrument() -> None:
    """Time every entry into the watch (the loop's calls and the hooks inside the step's forward pass count
    as loop time; setup, the epoch's snapshot and the confusion counting only in the total)."""
    for name in ("before_step", "after_step", "_layer_ran", "_relu_ran"):
        setattr(Watch, name, _timed(getattr(Watch, name), "loop", "all"))
    for name in ("__init__", "end_epoch"):
        setattr(Watch, name, _timed(getattr(Watch, name), "all"))
    trainer.count_confusion = _timed(trainer.count_confusion, "all")


def one(case: dict, watch: dict, device: str, root: Path, i: int) -> tuple[float, float, float, float]:
    SPENT.update(loop=0.0, all=0.0)
    out = root / f"{case['model']}-{'on' if watch['snapshots'] else 'off'}-{i}"
    settings = {**case, **watch}
    model = settings.pop("model")
    t = time.perf_counter()
    train(model, **settings, device=device, out=str(out), quiet=True, seed=i)
    wall = time.perf_counter() - t
    epoch = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"kind": "epoch"' in x]
    return epoch[-1]["images_per_s"], wall, SPENT["loop"] / epoch[-1]["seconds"], SPENT["all"] / wall


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = p.parse_args(argv)
    instrument()
    hw = hardware(torch.device(args.device))
    print(f"# {hw['device']}, {hw['cpu_count']} CPUs, torch {versions()['torch']} on {torch.get_num_threads()} "
          f"threads; {args.runs} runs each, alternating", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases:
            results = {"on": [], "off": []}
            one(CASES[name], OFF, args.device, Path(tmp), 99)  # warm-up: data cached, kernels chosen
            for i in range(args.runs):
                for key, watch in (("on", ON), ("off", OFF)):
                    results[key].append(one(CASES[name], watch, args.device, Path(tmp), i))
                    ips, wall, loop_share, share = results[key][-1]
                    print(f"  {name} {key} run {i + 1}: {ips:,.0f} img/s, {wall:.1f} s; in the watch: "
                          f"{100 * loop_share:.2f}% of the loop, {100 * share:.2f}% of the run", file=sys.stderr)
            on_ips, off_ips = [r[0] for r in results["on"]], [r[0] for r in results["off"]]
            on_s, off_s = [r[1] for r in results["on"]], [r[1] for r in results["off"]]
            loop_share = [100 * r[2] for r in results["on"]]
            share = [100 * r[3] for r in results["on"]]
            rows.append((name, spread(off_ips, ",.0f"), spread(on_ips, ",.0f"),
                         1 - statistics.median(on_ips) / statistics.median(off_ips),
                         spread(off_s, ".1f"), spread(on_s, ".1f"),
                         statistics.median(on_s) / statistics.median(off_s) - 1,
                         spread(loop_share, ".2f"), spread(share, ".2f")))
    print("| run | img/s, off | img/s, on | cost | wall s, off | wall s, on | cost | in the watch: % of loop | "
          "% of run |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, off_ips, on_ips, cost, off_s, on_s, wall_cost, loop_share, share in rows:
        print(f"| {name} | {off_ips} | {on_ips} | {100 * cost:+.1f}% | {off_s} | {on_s} | {100 * wall_cost:+.1f}% | "
              f"{loop_share} | {share} |")


if __name__ == "__main__":
    main()
