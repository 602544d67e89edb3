"""Memory of the lab while a page watches a long training: the server's resident memory and the browser tab's
JavaScript heap and DOM, sampled as the training streams its curves, health and snapshots.

    python benchmarks/lab_memory.py [--minutes 60] [--every 30] [--model lenet5] [--epochs 200]

It starts ``cnnlab serve`` (its own process, on a free port, over a temporary --runs folder), starts a training
from the lab's own endpoint (``POST /api/train/start``: LeNet-5 on MNIST by default, for more epochs than the
time allows), opens ``/train?run=ID`` in headless Chromium (Debian's; ``--chromium PATH``) and samples every
``--every`` seconds: the server's RSS (/proc), the tab's used JS heap and DOM node count (Chrome DevTools
Protocol ``Performance.getMetrics``, after a forced garbage collection), and the points on the page's loss
curve. The verdict compares the last sample with the one after the first minute (start-up allocations
done): a page that keeps working without growing memory shows the curve's points growing and the memory flat
(the curve's own arrays grow by a few bytes a point: reported per 1,000 points).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def post(url: str, body: dict, origin: str) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json", "origin": origin})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--every", type=float, default=30, help="seconds between samples")
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--chromium", default=shutil.which("chromium"))
    args = ap.parse_args(argv)
    if not args.chromium:
        raise SystemExit("no Chromium: apt-get install chromium, or pass --chromium PATH")
    from playwright.sync_api import sync_playwright

    runs = tempfile.mkdtemp(prefix="cnnlab-lab-memory-")
    server = subprocess.Popen([sys.executable, "-m", "cnnlab", "serve", "--runs", runs, "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    samples, run_id, base = [], None, None
    try:
        line = server.stdout.readline()
        if "http://" not in line:
            raise SystemExit(f"the lab did not start: {line}{server.stdout.read()[-2000:]}")
        base = line.split("http://", 1)[1].split("/", 1)[0]
        base = f"http://{base}"
        started = post(f"{base}/api/train/start", {"model": args.model, "data": args.data, "epochs": args.epochs},
                       base)
        run_id = started["id"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"{base}/train?run={run_id}")
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable")
            t0, end = time.time(), time.time() + args.minutes * 60
            while True:
                cdp.send("HeapProfiler.collectGarbage")
                metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
                points = page.evaluate("() => window.labTrain && window.labTrain.charts ? "
                                       "window.labTrain.charts.loss.data[0].length : 0")
                samples.append({"s": round(time.time() - t0), "server_mib": round(rss_mib(server.pid), 1),
                                "js_heap_mib": round(metrics.get("JSHeapUsedSize", 0) / 2**20, 2),
                                "dom_nodes": int(metrics.get("Nodes", 0)), "points": points})
                s = samples[-1]
                print(f"{s['s']:6d} s  server {s['server_mib']:8.1f} MiB  tab heap {s['js_heap_mib']:7.2f} MiB  "
                      f"DOM {s['dom_nodes']:6d} nodes  curve {s['points']:6d} points", flush=True)
                if time.time() >= end:
                    break
                time.sleep(args.every)
            browser.close()
    finally:
        if run_id and base:
            try:
                post(f"{base}/api/train/{run_id}/stop", {}, base)
            except Exception:  # noqa: BLE001 - the server may be gone already; the folder is removed below
                pass
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        time.sleep(1)
        shutil.rmtree(runs, ignore_errors=True)
    ref = next((s for s in samples if s["s"] >= 60), samples[0])
    last = samples[-1]
    grown = last["points"] - ref["points"]
    heap = last["js_heap_mib"] - ref["js_heap_mib"]
    per = f" ({heap / grown * 1000:+.3f} MiB per 1,000 points)" if grown > 0 else ""
    print(f"\nfrom {ref['s']} s to {last['s']} s: curve +{grown} points; server "
          f"{last['server_mib'] - ref['server_mib']:+.1f} MiB; tab heap {heap:+.2f} MiB{per}; DOM "
          f"{last['dom_nodes'] - ref['dom_nodes']:+d} nodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
