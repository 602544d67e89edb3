"""CIFAR-10 training throughput on this CPU: `cnnlab train resnet20` against the loop a CIFAR user would
otherwise run (akamaster/pytorch_resnet_cifar10, benchmarks/peers/akamaster_cifar.py), side by side.

    python benchmarks/cifar_throughput.py [--models resnet20 vgg_cifar] [--runs 3] [--steps 30] [--skip 10]
        [--batch 128] [--peer-workers 2] [--cnnlab-args "--compile"] [--data-dir DIR] [--json OUT]

Both sides train on the CIFAR-10 JPEG copy (``cifar10_jpeg``), each in a process of its own, one after the
other, runs interleaved (cnnlab, peer, cnnlab, peer, ...):

* cnnlab: ``cnnlab train MODEL --data cifar10_jpeg --epochs 1 --train-limit N --health-every 0 --no-snapshots``
  with the recipe's batch and the precision and layout it picks (plus ``--cnnlab-args``, e.g. ``--compile`` or
  ``--precision fp32``); its rate is that of steps ``--skip`` to ``--skip + --steps``, read from the step lines
  of its metrics.jsonl (benchmarks/side_by_side.py says how);
* the peer: the same number of timed steps after ``--skip`` warm-up steps, fp32 NCHW, per-image PIL
  transforms in ``--peer-workers`` DataLoader workers (the original's default is 4; this machine may have
  fewer cores).

Prints the conditions, this machine's measured peak convolution throughput (benchmarks/throughput.py's
probe: fp32, and bf16 where oneDNN has it), every run, then per model the median images/s with the min-max
spread, the training GFLOP/s (3 x 2 x the forward multiply-adds of ``cnnlab.summary`` per image) as a share
of each peak, and the ratio cnnlab / peer.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys

import cnnlab
from cnnlab.data.sources import data_root
from cnnlab.fileio import atomic_write_json
from cnnlab.platform import cpu_has_bf16, hardware
from side_by_side import cnnlab_rate, peer_rate
from throughput import peak_gflops


def shares(rate: float, macs: int, peaks: dict) -> str:
    gflops = rate * 6 * macs / 1e9
    parts = [f"{100 * gflops / peak:.1f}% of {name} peak" for name, peak in peaks.items() if peak]
    return f"{gflops:6.1f} GFLOP/s = {', '.join(parts)}"


def spread(rates: list[float]) -> str:
    return f"{statistics.median(rates):>8,.0f} img/s ({min(rates):,.0f}-{max(rates):,.0f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=["resnet20", "vgg_cifar"], default=["resnet20"])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--steps", type=int, default=30, help="timed steps (a multiple of --log-every)")
    p.add_argument("--skip", type=int, default=10, help="steps before the timing (a multiple of --log-every)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--peer-workers", type=int, default=2)
    p.add_argument("--cnnlab-args", default="", help='more flags for `cnnlab train`, e.g. "--compile"')
    p.add_argument("--data-dir", help="default: $CNNLAB_DATA_DIR, else cnnlab's cache folder")
    p.add_argument("--json", help="also write every figure here")
    args = p.parse_args()
    if args.skip % args.log_every or args.steps % args.log_every or not (args.skip > 0 and args.steps > 0):
        sys.exit("--skip and --steps must be positive multiples of --log-every")
    data_dir = str(data_root(args.data_dir))
    extra = shlex.split(args.cnnlab_args)

    hw = hardware()
    print(f"# CIFAR-10 (cifar10_jpeg) training images/s on CPU, batch {args.batch}: median of {args.runs} "
          f"interleaved runs of {args.steps} steps after {args.skip} (min-max)")
    print("# " + ", ".join(f"{k} {v}" for k, v in hw.items()))
    peaks = {"bf16": peak_gflops(True, True, 3) if cpu_has_bf16() else None,
             "fp32": max(peak_gflops(False, False, 3), peak_gflops(False, True, 3))}
    print("# measured peak 3x3 convolution throughput: "
          + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items() if v))
    command = shlex.join(["cnnlab", "train", "MODEL", "--data", "cifar10_jpeg", *extra])
    print(f"# cnnlab: `{command}`; peer: akamaster loop, fp32 NCHW, {args.peer_workers} DataLoader workers; "
          f"data from {data_dir}", flush=True)

    results = {"conditions": hw, "peaks_gflops": peaks, "settings": vars(args), "models": {}}
    for model in args.models:
        macs = cnnlab.summary(model).total_macs
        ours, peer = [], []
        for i in range(args.runs):
            ours.append(cnnlab_rate(model, device="cpu", batch=args.batch, skip=args.skip, steps=args.steps,
                                    log_every=args.log_every, extra=extra, data_dir=data_dir))
            peer.append(peer_rate(model, device="cpu", batch=args.batch, warmup=args.skip, steps=args.steps,
                                  workers=args.peer_workers, data_dir=data_dir))
            for side, rec in (("cnnlab", ours[-1]), ("peer", peer[-1])):
                if rec["status"] != "ok":
                    sys.exit(f"{model} run {i + 1}, {side}: {rec['error']}\n{rec.get('stderr_tail', '')}")
            print(f"{model} run {i + 1}: cnnlab {ours[-1]['images_per_s']:,.1f} img/s "
                  f"({ours[-1]['precision']}{' channels-last' if ours[-1]['channels_last'] else ''}), "
                  f"peer {peer[-1]['images_per_s']:,.1f} img/s (its data decoded in "
                  f"{peer[-1]['decode_seconds']:.1f} s, not counted)", flush=True)
        r_ours = [r["images_per_s"] for r in ours]
        r_peer = [r["images_per_s"] for r in peer]
        how = f"cnnlab ({ours[0]['precision']}{' channels-last' if ours[0]['channels_last'] else ''})"
        ratio = statistics.median(r_ours) / statistics.median(r_peer)
        for label, rates in ((how, r_ours), ("akamaster peer (fp32 NCHW)", r_peer)):
            print(f"{model:<10} {label:<28} {spread(rates)}  {shares(statistics.median(rates), macs, peaks)}")
        print(f"{model:<10} cnnlab / peer: x{ratio:.2f}  ({macs / 1e6:.1f}M multiply-adds per image forward)",
              flush=True)
        results["models"][model] = {"macs_per_image": macs, "cnnlab": ours, "peer": peer, "ratio": ratio}
    if args.json:
        atomic_write_json(args.json, results)


if __name__ == "__main__":
    main()
