"""cnnlab against its peers on a GPU, in one script of under 5 minutes (sized for an NVIDIA H200 with 16 CPU
cores): run it whenever a GPU is at hand.

    python benchmarks/gpu_check.py [--out build/gpu-check] [--data-dir DIR] [--budget 280] [--models ...]
    python benchmarks/gpu_check.py --device cpu --smoke      # the script itself, end to end, at tiny sizes

Every part is a process of its own with its own time limit, and none runs past the overall ``--budget``:

a. MNIST. The main job, ``cnnlab train lenet5`` (recipe lenet5_mnist) to its end: seconds from process start
   to exit, final top-1, and about when it first reached 99% (its exit less the in-run seconds after that
   epoch). The lecture peer (peers/lecture_mnist.py ``--device cuda``) to 99% test accuracy: seconds from
   process start to exit (it stops at 99%).
b. CIFAR-10 (cifar10_jpeg), for resnet20 and vgg_cifar: cnnlab's training images/s with the precision it picks
   (auto) and with ``--precision fp32``, and the akamaster peer's (peers/akamaster_cifar.py: fp32, per-image
   PIL transforms, 2 DataLoader workers), each over the same steps after a warm-up (side_by_side.py says how).
c. ``report.md`` and ``report.json`` in ``--out``, written again (atomically) after every part: the GPU, the
   torch, CUDA and cuDNN versions, every figure, the ratios, and each part that failed or ran out of time with
   the last lines of its stderr. A part that fails does not stop the others.

Exit status: 0 when every part passed, 1 when one did not, 2 without a GPU (``--device cpu --smoke`` runs
the same parts on the CPU with a few steps, 512 training images and one epoch, so that a test can check the
script; its figures say nothing about speed). Data: MNIST from cnnlab's own copy (written out first, untimed,
in the layout torchvision reads for the peer); CIFAR-10 from ``--data-dir`` (default: $CNNLAB_DATA_DIR, else
cnnlab's cache folder), which must hold ``cifar-10/cifar-10-jpg.tar.gz``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from cnnlab.data.sources import data_root
from cnnlab.fileio import atomic_write_json, atomic_write_text, read_jsonl
from cnnlab.platform import hardware, versions
from side_by_side import PEERS, cnnlab_rate, mnist_folder, outcome, peer_rate, run

RESERVE_S = 5  # kept back from the budget for writing the report
MIN_PART_S = 10  # a part is not started with less time than this left


@dataclass(frozen=True)
class Sizes:
    lenet_flags: tuple[str, ...]  # more flags for `cnnlab train lenet5`
    lecture_epochs: int
    mnist_images: tuple[int, int] | None  # (train, test) images in the peer's MNIST folder; None: all
    batch: int  # CIFAR parts
    skip: int  # steps before the timing
    steps: int  # timed steps
    log_every: int
    peer_decodes_all: bool  # the peer decodes the whole training set (else only what its steps need)
    limits: dict  # seconds per kind of part


FULL = Sizes((), 10, None, 128, 20, 100, 10, True, {"lenet5": 90, "lecture": 120, "cnnlab": 45, "peer": 60})
SMOKE = Sizes(("--train-limit", "512", "--epochs", "1"), 1, (512, 1000), 32, 2, 3, 1, False,
              {"lenet5": 90, "lecture": 90, "cnnlab": 90, "peer": 90})


class Check:
    """The parts run so far and the report they make, written after each."""

    def __init__(self, out: Path, budget: float, conditions: dict, settings: dict):
        self.out, self.budget, self.start = out, budget, time.perf_counter()
        self.started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        self.report = {"conditions": conditions, "settings": settings, "parts": {}, "ratios": {}}

    def part(self, key: str, what: str, own_limit: float, measure) -> dict:
        left = self.budget - (time.perf_counter() - self.start) - RESERVE_S
        if left < MIN_PART_S:
            rec = {"status": "skipped", "error": f"the {self.budget:.0f} s budget was spent"}
        else:
            try:
                rec = measure(min(own_limit, left))
            except Exception as e:  # noqa: BLE001 - one part's failure must not lose the others
                rec = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                       "stderr_tail": "".join(traceback.format_exc().splitlines(True)[-15:])}
        rec = {"what": what, **rec}
        self.report["parts"][key] = rec
        print(f"{key:<26} {rec['status']:<9} {rec.get('result') or rec.get('error', '')}", flush=True)
        self.write()
        return rec

    def write(self) -> None:
        self.report["ratios"] = ratios(self.report["parts"])
        self.report["seconds"] = time.perf_counter() - self.start
        self.report["failed"] = [k for k, r in self.report["parts"].items() if r["status"] != "ok"]
        atomic_write_json(self.out / "report.json", self.report)
        atomic_write_text(self.out / "report.md", render(self.report, self.started))


# -- a. MNIST ------------------------------------------------------------------------------------------------

def lenet5_main(device: str, sizes: Sizes):
    def measure(limit: float) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            ran = run([sys.executable, "-m", "cnnlab", "train", "lenet5", "--out", out, "--device", device,
                       "--quiet", *sizes.lenet_flags], limit)
            rec = outcome(ran)
            epochs = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("kind") == "epoch"]
            if not ran.ok:
                return rec
            if not epochs:
                return {**rec, "status": "failed", "error": "its metrics.jsonl holds no epoch"}
            last = epochs[-1]
            rec.update(final_top1=last["eval_top1"], epochs=last["epoch"], in_run_seconds=last["elapsed"],
                       precision=json.loads((out / "config.json").read_text())["precision"])
            first = next((r for r in epochs if r["eval_top1"] >= 99.0), None)
            if first:
                rec["seconds_to_99"] = ran.seconds - (last["elapsed"] - first["elapsed"])
                rec["epoch_99"] = first["epoch"]
            rec["result"] = (f"top-1 {last['eval_top1']:.2f}% after {last['epoch']} epochs in {ran.seconds:.1f} s"
                             + (f"; 99% at epoch {first['epoch']}, about {rec['seconds_to_99']:.1f} s" if first
                                else "; 99% not reached"))
            return rec
    return measure


def lecture_peer(device: str, sizes: Sizes, root: Path):
    def measure(limit: float) -> dict:
        ran = run([sys.executable, PEERS / "lecture_mnist.py", root, "--device", device,
                   "--epochs", sizes.lecture_epochs], limit)
        rec = outcome(ran)
        tops = [float(t) for t in re.findall(r"^epoch \d+ test top-1 ([\d.]+)%", ran.stdout, re.M)]
        if tops:  # a run out of time still says how far it got
            rec.update(final_top1=tops[-1], epochs=len(tops), reached_99=tops[-1] >= 99.0)
            rec["result"] = (f"top-1 {tops[-1]:.2f}% after {len(tops)} epochs in {ran.seconds:.1f} s"
                             + ("" if tops[-1] >= 99.0 else "; 99% not reached"))
        elif ran.ok:
            return {**rec, "status": "failed", "error": "it printed no epoch line"}
        return rec
    return measure


# -- b. CIFAR-10 ---------------------------------------------------------------------------------------------

def cifar_cnnlab(model: str, device: str, sizes: Sizes, data_dir: str, precision: str | None):
    def measure(limit: float) -> dict:
        rec = cnnlab_rate(model, device=device, batch=sizes.batch, skip=sizes.skip, steps=sizes.steps,
                          log_every=sizes.log_every, extra=["--precision", precision] if precision else [],
                          data_dir=data_dir, limit_s=limit)
        if rec["status"] == "ok":
            rec["result"] = (f"{rec['images_per_s']:,.0f} img/s ({rec['precision']}"
                             f"{' channels-last' if rec['channels_last'] else ''})")
        return rec
    return measure


def cifar_peer(model: str, device: str, sizes: Sizes, data_dir: str, workers: int):
    def measure(limit: float) -> dict:
        rec = peer_rate(model, device=device, batch=sizes.batch, warmup=sizes.skip, steps=sizes.steps,
                        workers=workers, data_dir=data_dir, limit_s=limit,
                        train_limit=0 if sizes.peer_decodes_all else (sizes.skip + sizes.steps) * sizes.batch)
        if rec["status"] == "ok":
            rec["result"] = (f"{rec['images_per_s']:,.0f} img/s (fp32, {workers} workers; decoding its data took "
                             f"{rec['decode_seconds']:.1f} s, not counted)")
        return rec
    return measure


# -- c. the report -------------------------------------------------------------------------------------------

def ratios(parts: dict) -> dict:
    out = {}

    def figure(key, name):
        rec = parts.get(key, {})
        return rec.get(name) if rec.get("status") == "ok" else None

    cnnlab_99, peer = figure("lenet5_cnnlab", "seconds_to_99"), parts.get("lenet5_lecture_peer", {})
    if cnnlab_99 and peer.get("status") == "ok" and peer.get("reached_99"):
        out["mnist: lecture peer / cnnlab, seconds from process start to 99%"] = peer["seconds"] / cnnlab_99
    models = sorted({k.split("_cnnlab")[0] for k in parts if k.endswith(("_cnnlab_auto", "_cnnlab_fp32"))})
    for m in models:
        auto, fp32 = figure(f"{m}_cnnlab_auto", "images_per_s"), figure(f"{m}_cnnlab_fp32", "images_per_s")
        theirs = figure(f"{m}_akamaster_peer", "images_per_s")
        if auto and theirs:
            out[f"{m}: cnnlab (auto) / peer, images/s"] = auto / theirs
        if fp32 and theirs:
            out[f"{m}: cnnlab (fp32) / peer, images/s"] = fp32 / theirs
        if auto and fp32:
            out[f"{m}: cnnlab auto / fp32, images/s"] = auto / fp32
    return out


def render(report: dict, started: str) -> str:
    c, s = report["conditions"], report["settings"]
    where = c.get("gpu") or c.get("cpu_model") or c["processor"]
    lines = [f"# cnnlab against its peers on {where}", ""]
    if s["smoke"]:
        lines += ["A smoke run (tiny sizes): it checks the script, its figures say nothing about speed.", ""]
    lines += [f"torch {c['torch']}, CUDA {c.get('cuda') or '-'}, cuDNN {c.get('cudnn') or '-'}, torchvision "
              f"{c.get('torchvision')}, cnnlab {c.get('cnnlab')}, Python {c['python']}; {c['cpu_count']} CPU cores"
              + (f"; driver {c['driver']}" if c.get("driver") else "") + f". Started {started}; "
              f"{report['seconds']:.0f} s of a {s['budget']:.0f} s budget.", "",
              "| part | what | result | seconds | status |", "|---|---|---|---:|---|"]
    for key, rec in report["parts"].items():
        secs = f"{rec['seconds']:.1f}" if "seconds" in rec else "-"
        status = rec["status"] + (f": {rec['error']}" if rec.get("error") else "")
        lines.append(f"| {key} | {rec['what']} | {rec.get('result', '-')} | {secs} | {status} |")
    if report["ratios"]:
        lines += ["", "## Ratios", ""] + [f"- {k}: x{v:.2f}" for k, v in report["ratios"].items()]
    failed = [(k, r) for k, r in report["parts"].items() if r["status"] != "ok"]
    if failed:
        lines += ["", "## Parts that did not pass"]
        for key, rec in failed:
            lines += ["", f"### {key}: {rec['status']} ({rec.get('error', '')})", ""]
            if rec.get("command"):
                lines += [f"`{rec['command']}`", ""]
            if rec.get("stderr_tail"):
                lines += ["```", rec["stderr_tail"], "```"]
    lines += ["", "## Settings", "", "```", json.dumps(s, indent=1), "```", ""]
    return "\n".join(lines)


def conditions(device: str) -> dict:
    c = {**hardware(torch.device(device)), **versions()}
    if device == "cuda":
        c["cuda"], c["cudnn"] = torch.version.cuda, torch.backends.cudnn.version()
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            c["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            c["driver"] = None
    return c


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="build/gpu-check")
    p.add_argument("--data-dir", help="holds cifar-10/cifar-10-jpg.tar.gz (default: $CNNLAB_DATA_DIR, else "
                                      "cnnlab's cache folder)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script (with --device cpu: "
                                                        "without a GPU)")
    p.add_argument("--budget", type=float, default=280.0, help="seconds for everything (default 280)")
    p.add_argument("--models", nargs="+", choices=["resnet20", "vgg_cifar"], default=["resnet20", "vgg_cifar"])
    p.add_argument("--peer-workers", type=int, default=2)
    args = p.parse_args()
    if args.device == "cpu" and not args.smoke:
        p.error("--device cpu is only for --smoke (CPU figures: benchmarks/cifar_throughput.py)")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible here, so there is nothing to measure (exit 2); "
              "`--device cpu --smoke` checks the script itself.", file=sys.stderr)
        sys.exit(2)

    sizes = SMOKE if args.smoke else FULL
    data_dir = str(data_root(args.data_dir))
    settings = {"device": args.device, "smoke": args.smoke, "budget": args.budget, "models": args.models,
                "peer_workers": args.peer_workers, "data_dir": data_dir, "sizes": asdict(sizes)}
    check = Check(Path(args.out), args.budget, conditions(args.device), settings)
    lim = sizes.limits
    what_lenet = "`cnnlab train lenet5` to its end" + (f" ({' '.join(sizes.lenet_flags)})" if sizes.lenet_flags
                                                        else " (recipe lenet5_mnist)")
    check.part("lenet5_cnnlab", what_lenet, lim["lenet5"], lenet5_main(args.device, sizes))
    with tempfile.TemporaryDirectory() as tmp:
        root = mnist_folder(Path(tmp), sizes.mnist_images)
        check.part("lenet5_lecture_peer", f"lecture peer (torchvision MNIST, batch 64) to 99%, at most "
                   f"{sizes.lecture_epochs} epochs", lim["lecture"], lecture_peer(args.device, sizes, root))
    steps = f"{sizes.steps} steps of {sizes.batch} after {sizes.skip}"
    for m in args.models:
        check.part(f"{m}_cnnlab_auto", f"`cnnlab train {m} --data cifar10_jpeg`, {steps}", lim["cnnlab"],
                   cifar_cnnlab(m, args.device, sizes, data_dir, None))
        check.part(f"{m}_cnnlab_fp32", "the same with `--precision fp32`", lim["cnnlab"],
                   cifar_cnnlab(m, args.device, sizes, data_dir, "fp32"))
        check.part(f"{m}_akamaster_peer", f"akamaster loop on {m}, {steps}", lim["peer"],
                   cifar_peer(m, args.device, sizes, data_dir, args.peer_workers))
    for k, v in check.report["ratios"].items():
        print(f"{k}: x{v:.2f}")
    print(f"report: {Path(args.out) / 'report.md'} ({check.report['seconds']:.0f} s)")
    sys.exit(1 if check.report["failed"] else 0)


if __name__ == "__main__":
    main()
