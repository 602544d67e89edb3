"""How fast the lab answers: page loads (the HTML with what every page fetches first) and the image explorer's
ResNet-50 view (all feature maps of one layer, then saliency and Grad-CAM of the predicted class), through the
app's own endpoints in this process (Starlette's TestClient: no network, the same worker threads as uvicorn).

    python benchmarks/lab.py [--runs 5] [--threads 2] [--layers conv1 layer1 layer4] [--json FILE]

In a real headless Chromium (``--chromium``, default: chromium on PATH), each page from navigation until the
page's last request on load has answered, the model page on GoogLeNet (table, totals and graph).

The ResNet-50 is ``model-resnet50``: its untrained weights (seed 0), since torchvision's weights may not be on
this machine; the arithmetic is the same as with trained weights, so the time is too. The image is a 640x480
JPEG upload (resized and centre-cropped to 224x224 as ``cnnlab predict`` does). Each figure is the median of
--runs runs with the min-max spread, after one warm-up view (the first, which also builds the model, is shown
apart). The goal: page loads under 1 s, the view under 3 s on 2 CPU cores.

Draw a digit: one update of the page (a 140x140 drawing of a 7 -> MNIST preparation, LeNet-5's forward with
every layer's maps, Grad-CAM's backward, the pictures) through ``/api/draw/predict``, against a LeNet-5 run
(``--draw-run RUN``, or one epoch of the main job trained first into a temporary folder, ~15 s). The goal:
under 150 ms on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import sys
import time

BASE = "http://127.0.0.1:8000"
ORIGIN = {"origin": BASE}


def timed(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def ok(r):
    if r.status_code != 200:
        raise SystemExit(f"{r.request.url} answered {r.status_code}: {r.text[:300]}")
    return r


def page_load(client, app, page: str):
    """The page's HTML, the shared script and style, the source list, and the page's own GET endpoints that
    take no parameters (the zoo's and model page's listings, where those pages have them)."""
    from starlette.routing import Route

    extra = [r.path for r in app.routes if isinstance(r, Route) and r.path.startswith(f"/api/{page.strip('/')}")
             and "{" not in r.path and "GET" in (r.methods or ())]

    def load():
        for path in (page, "/static/common.js", "/static/lab.css", "/api/sources", *extra):
            r = client.get(path)
            if path in extra and r.status_code != 200:  # an endpoint that needs parameters: not a page load
                continue
            ok(r)
    return load


def synthetic_jpeg() -> bytes:
    """A 640x480 photo-like JPEG: smooth colour gradients and a few shapes (deterministic)."""
    import numpy as np
    from PIL import Image, ImageDraw

    y, x = np.mgrid[0:480, 0:640].astype(np.float32)
    rgb = np.stack([x / 640, y / 480, 0.5 + 0.5 * np.sin(x / 40) * np.cos(y / 30)], -1)
    img = Image.fromarray((rgb * 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.ellipse((200, 120, 420, 340), fill=(200, 40, 40))
    d.rectangle((60, 300, 180, 440), fill=(30, 30, 160))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def seven(n: int = 140):
    """A 7 drawn on an n x n canvas as the page sends it: white strokes on black, a brush about 2/25 of it."""
    import numpy as np
    from PIL import Image, ImageDraw

    img = Image.new("L", (n, n))
    d = ImageDraw.Draw(img)
    w = max(2, n * 2 // 25)
    d.line([(0.25 * n, 0.22 * n), (0.72 * n, 0.22 * n), (0.45 * n, 0.82 * n)], fill=255, width=w, joint="curve")
    return np.asarray(img)


# From navigation start until the page's last answer arrived or its load event ended, whichever is later
# (Playwright's "networkidle" itself waits 500 ms of quiet, which is not the page's time).
SHOWN = """() => Math.max(performance.getEntriesByType("navigation")[0].loadEventEnd,
                 ...performance.getEntriesByType("resource").map(r => r.responseEnd))"""


def browser_loads(args) -> list[str]:
    """Each page in a real headless Chromium on uvicorn, from navigation until its last request on load has
    answered (see SHOWN); the model page shows GoogLeNet."""
    if not args.chromium:
        return ["(no Chromium: in-browser page times skipped; --chromium PATH)"]
    import socket
    import threading

    import uvicorn
    from playwright.sync_api import sync_playwright

    from cnnlab.lab import create_app
    from cnnlab.lab.app import PAGES

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(None, port=port), log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    out = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page()
            for path in PAGES:
                url = f"http://127.0.0.1:{port}{path}" + ("?name=googlenet" if path == "/model" else "")
                page.goto(url, wait_until="networkidle")  # warm-up: the model built, the catalog read
                t = []
                for _ in range(args.runs):
                    page.goto(url, wait_until="networkidle")
                    t.append(page.evaluate(SHOWN) / 1000)
                out.append(row(f"in Chromium: {path}{'?name=googlenet' if path == '/model' else ''}", t, 1.0))
            browser.close()
    finally:
        server.should_exit = True
    return out


def draw_updates(args) -> list[str]:
    import base64
    import shutil
    import tempfile

    from starlette.testclient import TestClient

    from cnnlab.lab import create_app
    from cnnlab.lab.sources import run_id

    tmp = None
    if args.draw_run:
        runs, label = os.path.dirname(os.path.abspath(args.draw_run)), os.path.basename(args.draw_run.rstrip("/"))
    else:
        import cnnlab

        tmp = tempfile.mkdtemp(prefix="cnnlab-lab-bench-")
        runs, label = tmp, "lenet5"
        cnnlab.train("lenet5", epochs=1, out=os.path.join(tmp, label), quiet=True)
    try:
        client = TestClient(create_app(runs), base_url=BASE)
        canvas = seven()
        body = {"source": run_id(label), "size": canvas.shape[0],
                "pixels": base64.b64encode(canvas.tobytes()).decode()}
        first = ok(client.post("/api/draw/predict", json=body, headers=ORIGIN)).json()  # opens the run, its scales
        times, inside = [], []
        for _ in range(args.draw_updates):
            t = time.perf_counter()
            r = ok(client.post("/api/draw/predict", json=body, headers=ORIGIN)).json()
            times.append(time.perf_counter() - t)
            inside.append(r["ms"]["total"] / 1000)
        return [row(f"draw a digit: one update (read as {first['top'][0]['class']})", times, 0.150),
                row("  of which inside the endpoint", inside, None)]
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def row(name: str, times: list[float], goal: float | None) -> str:
    med = statistics.median(times)
    verdict = "" if goal is None else ("  ok" if med < goal else f"  OVER {goal:g} s")
    return f"{name:<44} {med:7.3f} s   ({min(times):.3f}-{max(times):.3f}, n={len(times)}){verdict}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch's intra-op threads (default 2: the 2-core goal)")
    ap.add_argument("--layers", nargs="+", default=["conv1", "layer1", "layer4"])
    ap.add_argument("--draw-run", help="a LeNet-5 run on MNIST (default: train one epoch into a temporary folder)")
    ap.add_argument("--draw-updates", type=int, default=50)
    ap.add_argument("--chromium", default=shutil.which("chromium"),
                    help="a Chromium for the in-browser page times (default: chromium on PATH; none: skipped)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    import torch
    from starlette.testclient import TestClient

    from cnnlab.lab import create_app

    torch.set_num_threads(args.threads)
    app = create_app(None)
    client = TestClient(app, base_url=BASE)
    results: dict[str, list[float]] = {}
    lines = []

    for page in ("/zoo", "/model", "/explorer"):
        load = page_load(client, app, page)
        load()  # warm-up
        results[f"page {page}"] = timed(load, args.runs)
        lines.append(row(f"page load {page}", results[f"page {page}"], 1.0))

    source = "model-resnet50"
    up = ok(client.post("/api/explorer/upload", params={"name": "photo.jpg", "source": source},
                        content=synthetic_jpeg(), headers={**ORIGIN, "content-type": "image/jpeg"})).json()
    image = up["id"]

    def view(layer):
        def go():
            ok(client.get("/api/explorer/predict", params={"source": source, "image": image}))
            ok(client.get("/api/explorer/features", params={"source": source, "image": image, "layer": layer}))
            ok(client.get("/api/explorer/attribution", params={"source": source, "image": image}))
        return go

    first = timed(view(args.layers[0]), 1)
    lines.append(row("ResNet-50 first view (builds the model)", first, None))
    for layer in args.layers:
        feats = client.get("/api/explorer/features", params={"source": source, "image": image, "layer": layer}).json()
        shape = "x".join(map(str, feats["shape"]))
        view(layer)()  # warm-up
        results[f"resnet50 view {layer}"] = t = timed(view(layer), args.runs)
        lines.append(row(f"ResNet-50 view, {layer} ({shape})", t, 3.0))
        for part, path in (("top-5", "predict"), ("feature maps", "features"), ("saliency + Grad-CAM", "attribution")):
            params = {"source": source, "image": image, "layer": layer} if path == "features" else \
                {"source": source, "image": image}
            results[f"resnet50 {path} {layer}"] = t = timed(lambda: ok(client.get(f"/api/explorer/{path}",
                                                                                  params=params)), args.runs)
            lines.append(row(f"  {part}", t, None))

    lines += browser_loads(args)
    lines += draw_updates(args)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    from cnnlab.platform import cpu_model

    print(f"cnnlab lab timings: {cpu_model()}, {cores} cores available, torch {torch.__version__} on "
          f"{args.threads} threads, Python {platform.python_version()}; median (min-max) of {args.runs} runs after "
          f"a warm-up; ResNet-50 with untrained weights (model-resnet50), a 640x480 JPEG upload -> 224x224")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
