"""Does the fast path cost accuracy? The same recipe, seed and data trained in fp32 and in a reduced
precision (bf16 autocast with channels-last; fp16 with a gradient scaler on GPUs), side by side.

    python benchmarks/precision_accuracy.py --model vgg_cifar --data cifar10_jpeg --train-limit 10000 --epochs 4
    python benchmarks/precision_accuracy.py --model lenet5 --seeds 0 1 2

Every run is a real `cnnlab train` (cnnlab.train.train) with only --precision changed; the table gives each
run's final test top-1 and wall time, and the difference per seed. `--precision auto` is what this machine
would pick by default, printed first. On a GPU, run the recipe's full schedule (leave out --epochs and
--train-limit); on a CPU without AMX a full vgg_cifar run takes hours, hence the short-schedule options.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

import cnnlab
from cnnlab.train import TrainConfig, train
from cnnlab.platform import hardware, resolve_device, resolve_precision


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg_cifar")
    ap.add_argument("--data", default=None, help="dataset (default: the recipe's)")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--train-limit", type=int, default=None, help="train on a class-balanced subset of N images")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    device = resolve_device(args.device)
    summary = cnnlab.summary(args.model)
    auto = resolve_precision("auto", device, summary.total_macs)
    print(f"{args.model} on {args.data or 'its recipe data'}; device {device}; torch {torch.__version__}; "
          f"{hardware()}")
    print(f"--precision auto picks {auto} here; seeds {args.seeds}; epochs {args.epochs or 'recipe'}; "
          f"train limit {args.train_limit or 'none'}\n")

    results: dict[tuple[int, str], tuple[float, float]] = {}
    for seed in args.seeds:
        for p in args.precisions:  # interleaved, so slow drifts of the machine hit both alike
            with tempfile.TemporaryDirectory() as out:
                t = time.perf_counter()
                r = train(TrainConfig(args.model, data=args.data, epochs=args.epochs, precision=p, seed=seed,
                                      device=args.device, train_limit=args.train_limit, out=out, quiet=True))
                results[seed, p] = (r.final["eval_top1"], time.perf_counter() - t)
            print(f"seed {seed} {p:>5}: test top-1 {results[seed, p][0]:.2f}%  in {results[seed, p][1]:.0f} s",
                  flush=True)

    base = args.precisions[0]
    print("\n| seed | " + " | ".join(f"{p} top-1 (time)" for p in args.precisions) + " | "
          + " | ".join(f"{p} - {base}" for p in args.precisions[1:]) + " |")
    print("|---" * (1 + 2 * len(args.precisions) - 1) + "|")
    for seed in args.seeds:
        cells = [f"{results[seed, p][0]:.2f}% ({results[seed, p][1]:.0f} s)" for p in args.precisions]
        diffs = [f"{results[seed, p][0] - results[seed, base][0]:+.2f}" for p in args.precisions[1:]]
        print(f"| {seed} | " + " | ".join(cells + diffs) + " |")
    if len(args.seeds) > 1:
        for p in args.precisions[1:]:
            d = [results[s, p][0] - results[s, base][0] for s in args.seeds]
            print(f"{p} - {base}: median {statistics.median(d):+.2f} points (min {min(d):+.2f}, max {max(d):+.2f})")


if __name__ == "__main__":
    main()
