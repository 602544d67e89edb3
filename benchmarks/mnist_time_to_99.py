"""Time to 99.0% MNIST test accuracy: cnnlab's default run versus a plain PyTorch loop, side by side.

    python benchmarks/mnist_time_to_99.py [--model lenet5] [--runs 3] [--max-epochs 12]

Both sides train the same network (``cnnlab.create_model(MODEL)``) on the official MNIST files and are timed
from the start of the run, data loading included, until an end-of-epoch test accuracy of 99.0% or more:

* cnnlab: ``cnnlab train MODEL`` with its default recipe (in-memory uint8 batches, batch augmentation and
  normalisation, the recipe's schedule, the precision cnnlab picks);
* plain loop: torchvision ``datasets.MNIST`` with ``ToTensor`` + ``Normalize``, a ``DataLoader`` with batch
  64 and the loader's default worker count (0), SGD lr 0.01 momentum 0.9, fp32 — the textbook loop. The
  28x28 digits are padded to 32x32 (``Pad(2)``) for LeNet-5's input.

Prints each run, then the median with its spread (min-max) and the ratio plain / cnnlab. A side that does not
reach 99.0% within --max-epochs counts as "not reached" and its time is reported as a lower bound.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnlab.platform import hardware


def cnnlab_run(model: str, max_epochs: int, seed: int) -> tuple[float, int | None]:
    from cnnlab.train import TrainConfig, train
    from cnnlab.runs import load_checkpoint

    with tempfile.TemporaryDirectory() as out:
        result = train(TrainConfig(model=model, out=out, quiet=True, seed=seed))
        for h in load_checkpoint(out)["history"]:
            if h["eval_top1"] >= 99.0:
                return h["elapsed"], h["epoch"]
        return result.seconds, None


def plain_run(model: str, max_epochs: int, seed: int) -> tuple[float, int | None]:
    import cnnlab
    from torchvision import datasets, transforms

    from cnnlab.data.sources import EMBEDDED

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as root:
        raw = Path(root) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        start = time.perf_counter()
        for f in (EMBEDDED / "mnist").iterdir():  # torchvision reads the decompressed IDX files
            with gzip.open(f) as src, open(raw / f.name.removesuffix(".gz"), "wb") as dst:
                shutil.copyfileobj(src, dst)
        tf = transforms.Compose([transforms.Pad(2), transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
        train_ds = datasets.MNIST(root, train=True, transform=tf, download=False)
        test_ds = datasets.MNIST(root, train=False, transform=tf, download=False)
        train_dl = torch.utils.data.DataLoader(train_ds, batch_size=64, shuffle=True)
        test_dl = torch.utils.data.DataLoader(test_ds, batch_size=1000)
        net = cnnlab.create_model(model)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        for epoch in range(1, max_epochs + 1):
            net.train()
            for x, y in train_dl:
                opt.zero_grad()
                F.cross_entropy(net(x), y).backward()
                opt.step()
            net.eval()
            correct = 0
            with torch.no_grad():
                for x, y in test_dl:
                    correct += (net(x).argmax(1) == y).sum().item()
            if correct / 100 >= 99.0:
                return time.perf_counter() - start, epoch
        return time.perf_counter() - start, None


def describe(times: list[tuple[float, int | None]]) -> str:
    secs = [t for t, _ in times]
    reached = all(e is not None for _, e in times)
    med = statistics.median(secs)
    epochs = [e for _, e in times]
    return (f"{'' if reached else '>'}{med:.1f} s (min {min(secs):.1f}, max {max(secs):.1f}; epochs {epochs})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet5")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--max-epochs", type=int, default=12)
    args = p.parse_args()
    print(f"# MNIST time to 99.0% test accuracy, {args.model}, {args.runs} runs each, interleaved")
    print("# " + ", ".join(f"{k} {v}" for k, v in hardware().items()))
    ours, plain = [], []
    for i in range(args.runs):
        ours.append(cnnlab_run(args.model, args.max_epochs, seed=i))
        print(f"run {i + 1}: cnnlab {ours[-1][0]:.1f} s (epoch {ours[-1][1]})", flush=True)
        plain.append(plain_run(args.model, args.max_epochs, seed=i))
        print(f"run {i + 1}: plain  {plain[-1][0]:.1f} s (epoch {plain[-1][1]})", flush=True)
    print(f"cnnlab: {describe(ours)}")
    print(f"plain:  {describe(plain)}")
    ratio = statistics.median(t for t, _ in plain) / statistics.median(t for t, _ in ours)
    print(f"plain / cnnlab: {ratio:.1f}x")


if __name__ == "__main__":
    main()
