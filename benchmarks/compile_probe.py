"""What torch.compile does for one network's training step on this machine: the compile time (the first two
steps) and the steady images/s, eager against the compile modes, in the precision and layout cnnlab picks.

    python benchmarks/compile_probe.py lenet5 [--modes eager default max-autotune-no-cudagraphs] [--batch 128]

Each mode runs in a fresh process (so one mode's compile cache does not serve the next; inductor's on-disk
cache may), random data at the model's input size, SGD with Nesterov momentum; the steady rate is the median
of 5 x 30 steps after 10 more warm-up steps (min-max printed).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def probe(model: str, mode: str, batch: int) -> None:
    import torch
    import torch.nn.functional as F

    import cnnlab
    from cnnlab.analysis.summary import summary
    from cnnlab.platform import keep_freed_memory, resolve_channels_last, resolve_precision

    keep_freed_memory()
    torch.manual_seed(0)
    card = cnnlab.model_card(model)
    net = cnnlab.create_model(model)
    precision = resolve_precision("auto", torch.device("cpu"), summary(net, card.input_size).total_macs)
    cl = resolve_channels_last(None, precision, torch.device("cpu"))
    net = net.to(memory_format=torch.channels_last) if cl else net
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(batch, *card.input_size)
    x = x.contiguous(memory_format=torch.channels_last) if cl else x
    y = torch.randint(0, card.num_classes, (batch,))
    step_net = net if mode == "eager" else torch.compile(net, mode=None if mode == "default" else mode)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(step_net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t = time.perf_counter()
    step(), step()
    first = time.perf_counter() - t
    for _ in range(10):
        step()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(30):
            step()
        times.append((time.perf_counter() - t) / 30)
    times.sort()
    print(f"{model} {mode} ({precision}{' channels-last' if cl else ''}, batch {batch}): first two steps "
          f"{first:.1f} s, {batch / times[2]:,.0f} images/s ({batch / times[-1]:,.0f}-{batch / times[0]:,.0f})",
          flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--modes", nargs="+", default=["eager", "default", "max-autotune-no-cudagraphs"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one mode in this process
    args = p.parse_args()
    if args.one:
        return probe(args.model, args.one, args.batch)
    for mode in args.modes:
        subprocess.run([sys.executable, __file__, args.model, "--one", mode, "--batch", str(args.batch)], check=True)


if __name__ == "__main__":
    main()
