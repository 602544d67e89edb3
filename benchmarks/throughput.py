"""Training throughput: fp32 NCHW eager versus cnnlab's fast path, side by side, with the share of this
machine's measured peak convolution throughput that each reaches. The default layout and precision are the
trainer's own choice (`resolve_precision`, `resolve_channels_last`), so this measures what
`cnnlab train` runs.

    python benchmarks/throughput.py [--models lenet5 vgg_cifar resnet20] [--runs 5] [--steps 10] [--batch 128]

One training step = forward, cross-entropy, backward and an SGD update on a batch at the model's published
input size. Training FLOPs per image are taken as 3 x the forward multiply-adds x 2 (forward, and backward
for inputs and weights), with the forward count from cnnlab's inspector. The peak is the best of a large
3x3 convolution (256 -> 256 channels, 32x32, batch 64) timed forward in the same precision, the faster of
the two layouts.
Each figure is the median of --runs timings of --steps steps, with min-max spread.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

import cnnlab
from cnnlab.platform import cpu_has_bf16, hardware, resolve_channels_last, resolve_precision


def timed(fn, runs: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def peak_gflops(bf16: bool, channels_last: bool, runs: int) -> float:
    x = torch.randn(64, 256, 32, 32)
    w = torch.randn(256, 256, 3, 3)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext
    with torch.no_grad():
        def step():
            with ctx():
                F.conv2d(x, w, padding=1)
        t = min(timed(step, runs))
    return 2 * 64 * 256 * 256 * 9 * 32 * 32 / t / 1e9


def train_rate(model_name: str, bf16: bool, channels_last: bool, batch: int, steps: int, runs: int) -> list[float]:
    card = cnnlab.model_card(model_name)
    model = cnnlab.create_model(model_name)
    x = torch.randn(batch, *card.input_size)
    y = torch.randint(0, card.num_classes, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext

    def run():
        for _ in range(steps):
            with ctx():
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return [batch * steps / t for t in timed(run, runs)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["lenet5", "vgg_cifar", "resnet20"])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    print(f"# training images/s, batch {args.batch}, median of {args.runs} x {args.steps} steps (min-max)")
    print("# " + ", ".join(f"{k} {v}" for k, v in hardware().items()))
    peaks = {"fp32": max(peak_gflops(False, False, 3), peak_gflops(False, True, 3)),
             "bf16": peak_gflops(True, True, 3) if cpu_has_bf16() else None}
    print(f"# measured peak conv throughput: fp32 {peaks['fp32']:.0f} GFLOP/s"
          + (f", bf16 channels-last {peaks['bf16']:.0f} GFLOP/s" if peaks["bf16"] else ""))
    cpu = torch.device("cpu")
    for name in args.models:
        macs = cnnlab.summary(name).total_macs
        fast = resolve_precision("auto", cpu, macs)
        fast_cl = resolve_channels_last(None, fast, cpu)
        rows = [("fp32 NCHW eager", False, False),
                (f"cnnlab default ({fast}{' channels-last' if fast_cl else ''})", fast == "bf16", fast_cl)]
        if fast == "fp32" and cpu_has_bf16():
            rows.append(("bf16 channels-last (not chosen)", True, True))
        base = None
        for label, bf16, cl in rows:
            rates = train_rate(name, bf16, cl, args.batch, args.steps, args.runs)
            med = statistics.median(rates)
            base = base or med
            gflops = med * 6 * macs / 1e9
            peak = peaks["bf16" if bf16 else "fp32"]
            print(f"{name:<10} {label:<34} {med:>9,.0f} img/s ({min(rates):,.0f}-{max(rates):,.0f})  "
                  f"x{med / base:.2f}  {gflops:6.1f} GFLOP/s = {100 * gflops / peak:4.1f}% of peak")


if __name__ == "__main__":
    main()
