"""The NumPy im2col convolution (``cnnlab.scratch.Conv2d``) against torch's CPU convolution, same shapes, fp32.

    python benchmarks/scratch_conv.py [--runs 7] [--reps 10] [--threads N]

Shapes: LeNet's two convolutions on a batch of 32 MNIST digits, and a 64 -> 64 channel 3x3 convolution with
padding 1 on a batch of 32 32x32 maps (a VGG/ResNet-on-CIFAR layer). For each, the forward pass and the
backward pass (dL/dx, dL/dw and dL/db from a given dL/dy) are timed on both sides:

* scratch: ``Conv2d.forward`` (im2col + one matrix product) and ``Conv2d.backward`` (two products + col2im),
  NumPy's OpenBLAS limited to --threads threads;
* torch: ``F.conv2d`` under ``torch.no_grad`` and ``torch.ops.aten.convolution_backward`` (the kernel autograd
  calls), ``torch.set_num_threads(--threads)``.

Each figure is the median of --runs timings of --reps calls (after one warm-up), with the min-max spread, in
milliseconds per call; ratio = scratch / torch (the goal: 3x or less).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.scratch import Conv2d
from cnnlab.scratch.blas import blas_threads
from cnnlab.platform import cpu_model

SHAPES = [  # name, N, C_in, H, W, C_out, k, stride, pad
    ("LeNet conv1 5x5, 1->6, 28x28", 32, 1, 28, 28, 6, 5, 1, 0),
    ("LeNet conv2 5x5, 6->16, 12x12", 32, 6, 12, 12, 16, 5, 1, 0),
    ("3x3, 64->64, 32x32, pad 1", 32, 64, 32, 32, 64, 3, 1, 1),
]


def timed(fn, runs: int, reps: int) -> list[float]:
    fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        out.append((time.perf_counter() - t) / reps * 1e3)
    return out


def fmt(ms: list[float]) -> str:
    return f"{statistics.median(ms):8.2f} ({min(ms):.2f}-{max(ms):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {cpu_model()}, {args.threads} thread(s) on both sides; numpy {np.__version__}, "
          f"torch {torch.__version__}; median (min-max) of {args.runs} runs x {args.reps} calls, ms per call, fp32")
    print(f"{'shape':<32} {'pass':<8} {'scratch (numpy)':>24} {'torch':>24} {'ratio':>6}")
    rng = np.random.default_rng(0)
    with blas_threads(args.threads), torch.no_grad():
        for shape in SHAPES:
            for what, ours, theirs in bench(*shape, rng=rng, runs=args.runs, reps=args.reps):
                ratio = statistics.median(ours) / statistics.median(theirs)
                print(f"{shape[0]:<32} {what:<8} {fmt(ours):>24} {fmt(theirs):>24} {ratio:5.1f}x")


def bench(name, n, c, h, w, f, k, s, p, rng, runs, reps):
    """[(pass, scratch timings, torch timings)] for one shape, after checking both sides agree."""
    layer = Conv2d(c, f, k, stride=s, padding=p, rng=rng, dtype=np.float32)
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    y = layer.forward(x)
    g = rng.standard_normal(y.shape, dtype=np.float32)
    tx, tw = torch.from_numpy(x), torch.from_numpy(layer.params["weight"])
    tb, tg = torch.from_numpy(layer.params["bias"]), torch.from_numpy(g)

    def torch_backward():
        return torch.ops.aten.convolution_backward(tg, tx, tw, [f], [s, s], [p, p], [1, 1], False, [0, 0], 1,
                                                   [True, True, True])

    assert np.allclose(F.conv2d(tx, tw, tb, s, p).numpy(), y, atol=1e-3)
    assert np.allclose(torch_backward()[0].numpy(), layer.backward(g), atol=1e-3)
    return [("forward", timed(lambda: layer.forward(x), runs, reps),
             timed(lambda: F.conv2d(tx, tw, tb, s, p), runs, reps)),
            ("backward", timed(lambda: layer.backward(g), runs, reps), timed(torch_backward, runs, reps))]


if __name__ == "__main__":
    main()
