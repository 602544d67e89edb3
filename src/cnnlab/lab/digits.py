"""Draw a digit (``/draw``): a drawing on the page's canvas prepared as MNIST's digits were, and what a
LeNet-5 trained on MNIST makes of it, layer by layer.

A network trained on MNIST has only seen digits prepared one way (LeCun et al. 1998, Sec. III.A, and the
MNIST page): NIST's binary digits were *size-normalised to fit a 20x20 box* preserving their aspect ratio,
the anti-aliasing of that resampling giving the grey levels, then *centred in a 28x28 field by their centre of
mass*. A digit drawn small in a corner of the canvas, or large, or off-centre, is misread unless it is prepared
the same way; :func:`mnist_digit` does it step by step. :func:`network_input` then prepares those 28x28 grey
levels exactly as the run's evaluation images are (the run's DataView: LeNet-5's recipe pads 28 -> 32 with
zeros, the dataset's mean and std), with the library's own functions, so the numbers on the page are those of
``cnnlab predict RUN digit.png`` on the 28x28 PNG the page offers.

Endpoints: ``POST /api/draw/predict`` (a canvas, as grey levels, -> the 28x28 digit, top-3, every layer's
activations, Grad-CAM; one forward pass with hooks and one backward pass) and ``POST /api/draw/train`` (no
run on MNIST yet: a ~30-second training of LeNet-5 as a lab job, in a plain ``cnnlab train`` subprocess).
"""

from __future__ import annotations

import atexit
import base64
import binascii
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.lab.web import LabError
from cnnlab.lab.sources import model_lock, on_model

BOX = 20  # LeCun et al.: each digit is scaled to fit a 20x20 box ...
INK = 0.1  # canvas grey levels (0..1) above this are ink; the brush's faint anti-aliased rim below it is not
MIN_GRID, MAX_GRID = 28, 560  # the canvas grid the page sends: its side, in cells
SKIP = (nn.Flatten, nn.Dropout, nn.Identity)  # layers that show nothing new
SCALE_IMAGES = 256  # test images that fix each layer's colour scale
TRAIN_ARGS = ["lenet5"]  # the main job as the README runs it: its paper recipe, about 30 s on 2 CPU cores, ~99%
TRAIN_KEY = "draw-train"  # one such training at a time, whichever page asks


# ------------------------------------------------------------------------------------------- the preprocessing

def decode_canvas(body: dict) -> np.ndarray:
    """The page's canvas as an N x N float array in 0..1 (white ink on black, as MNIST): ``size`` N and
    ``pixels``, N*N bytes (grey levels 0..255, row by row) in base64. Everything is checked: a malformed or
    oversized body is the client's mistake, in one sentence."""
    size, pixels = body.get("size"), body.get("pixels")
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_GRID <= size <= MAX_GRID:
        raise LabError(f"`size` must be the canvas grid's side, an integer from {MIN_GRID} to {MAX_GRID}, "
                       f"got {size!r}")
    if not isinstance(pixels, str):
        raise LabError("`pixels` must be the canvas's grey levels as base64 text")
    if len(pixels) > 4 * (size * size + 2) // 3 + 4:
        raise LabError(f"`pixels` is longer than a {size}x{size} canvas of one byte per pixel", 413)
    try:
        raw = base64.b64decode(pixels, validate=True)
    except (binascii.Error, ValueError):
        raise LabError("`pixels` is not valid base64") from None
    if len(raw) != size * size:
        raise LabError(f"`pixels` holds {len(raw)} bytes; a {size}x{size} canvas has {size * size}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(size, size).astype(np.float32) / 255


def ink_box(canvas: np.ndarray, ink: float = INK) -> tuple[int, int, int, int] | None:
    """Step 1: the bounding box of the ink (top, bottom, left, right; bottom and right exclusive), or None
    for an empty canvas."""
    rows, cols = np.nonzero(canvas > ink)
    if rows.size == 0:
        return None
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


def fit_box(crop: np.ndarray, box: int = BOX) -> np.ndarray:
    """Step 2: the digit scaled so that its longer side is ``box`` pixels, the aspect ratio kept (a 1 stays
    thin). The resampling is anti-aliased (Pillow's bilinear filter widens with the reduction, so each output
    pixel averages the canvas cells it covers): the strokes' edges become grey levels, as in MNIST."""
    from PIL import Image

    h, w = crop.shape
    scale = box / max(h, w)
    size = (max(1, min(box, round(w * scale))), max(1, min(box, round(h * scale))))  # PIL: (width, height)
    img = Image.fromarray(crop.astype(np.float32), mode="F").resize(size, Image.BILINEAR)
    return np.clip(np.asarray(img, dtype=np.float32), 0, 1)


def centre_of_mass(img: np.ndarray) -> tuple[float, float]:
    """The grey-level-weighted mean (row, column) of an image, pixel centres at integer coordinates."""
    total = float(img.sum())
    rows, cols = np.indices(img.shape)
    return float((rows * img).sum()) / total, float((cols * img).sum()) / total


def centre(digit: np.ndarray, field: int) -> np.ndarray:
    """Step 3: the scaled digit placed in a ``field`` x ``field`` black image so that its centre of mass falls
    on the field's centre (14, 14 for MNIST's 28x28, where MNIST's own digits have it). The shift is a whole
    number of pixels, as MNIST's (its centres of mass spread +-0.5 px around 14), so no second resampling
    blurs the digit; the digit is kept inside the field when a lopsided shape would push it out."""
    h, w = digit.shape
    cy, cx = centre_of_mass(digit)
    top = min(max(round(field / 2 - cy), 0), field - h)
    left = min(max(round(field / 2 - cx), 0), field - w)
    out = np.zeros((field, field), dtype=np.float32)
    out[top:top + h, left:left + w] = digit
    return out


def mnist_digit(canvas: np.ndarray, field: int = 28, box: int = BOX) -> np.ndarray:
    """A canvas (H x W grey levels in 0..1, white on black) as an MNIST digit: ``field`` x ``field`` uint8,
    the ink's bounding box scaled to fit ``box`` x ``box`` (aspect ratio kept, anti-aliased) and centred by its
    centre of mass. MNIST's images are 8-bit; so is this one (the 28x28 PNG the page offers holds exactly it)."""
    found = ink_box(canvas)
    if found is None:
        raise LabError("the canvas is empty: draw a digit first")
    top, bottom, left, right = found
    digit = fit_box(canvas[top:bottom, left:right], box)
    if digit.sum() <= 0:
        raise LabError("the drawing is too faint to read: draw a digit first")
    return np.round(centre(digit, field) * 255).astype(np.uint8)


def network_input(digit: np.ndarray, view) -> torch.Tensor:
    """Step 4: the 28x28 uint8 digit as the run's network reads its evaluation images (1 x 1 x H x W): padded
    as its recipe pads (LeNet-5: 28 -> 32, digit centred) and normalised with the dataset's mean and std, by
    the same functions the trainer and ``cnnlab predict`` use."""
    from cnnlab.data.memory import pad_to, preprocess

    mean, std = view.stats()
    x = torch.tensor(np.asarray(digit, dtype=np.uint8))[None, None]
    return preprocess(pad_to(x, view.pad_to), mean, std)


# ------------------------------------------------------------------------------------------- the network's view

_PROBES: OrderedDict[tuple, dict] = OrderedDict()
_PROBES_LOCK = threading.Lock()


def shown_layers(model: nn.Module, input_size) -> list[dict]:
    """Every layer worth showing, in the order it runs: the modules without children that run once per
    forward pass (a module applied several times, like LeNet-5's shared tanh, keeps only its last output, so
    its outputs are shown as the layers before it), less flatten/dropout/identity."""
    from cnnlab.visualize.layers import trace

    calls = trace(model, input_size)
    count: dict[str, int] = {}
    for c in calls:
        count[c.name] = count.get(c.name, 0) + 1
    return [{"name": c.name, "type": type(c.module).__name__, "shape": list(c.shape)} for c in calls
            if count[c.name] == 1 and c.shape and not list(c.module.children()) and not isinstance(c.module, SKIP)]


def layer_scales(run, layers: list[str]) -> dict[str, tuple[float, float]]:
    """One colour scale per layer, fixed for the run: the 1% and 99% quantiles of the layer's outputs on the
    first test images (the rare larger values saturate rather than wash every map out), so a map keeps its
    colours while the drawing changes and the maps of one layer compare. A scale that straddles 0 is made
    symmetric (a diverging map: red positive, blue negative). Empty when the test images cannot be opened (the
    maps then take each drawing's own range)."""
    from cnnlab.data.memory import load, pad_to, preprocess
    from cnnlab.errors import CnnlabError
    from cnnlab.visualize.hooks import capture

    try:
        images = load(run.info.view.data, "test").images[:SCALE_IMAGES]  # MNIST: the package's embedded copy
    except (CnnlabError, OSError):  # a nicety: the maps then take each drawing's own range
        return {}
    mean, std = run.info.view.stats()
    x = preprocess(pad_to(images, run.info.view.pad_to), mean, std)
    with model_lock(run.model), capture(run.model, layers) as cap, torch.no_grad():
        run.model(on_model(run.model, x))
        out = {}
        for name in layers:
            a = cap.outputs[name].float().flatten().cpu()
            a = a[torch.randperm(a.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
            lo, hi = (float(v) for v in torch.quantile(a, torch.tensor([0.01, 0.99])))
            out[name] = _symmetric(lo, hi)
    return out


def _symmetric(lo: float, hi: float) -> tuple[float, float]:
    if lo < 0 < hi:
        m = max(-lo, hi)
        return -m, m
    return (lo, hi) if hi > lo else (lo, lo + 1e-6)


def probe(lab, source: str, run) -> dict:
    """What a run's views need once: the layers shown, the Grad-CAM layer, each layer's colour scale (cached by
    the run's id and its checkpoint's time: a newer checkpoint is probed again)."""
    from cnnlab.visualize.layers import gradcam_layer

    entry = lab.sources.entry(source)
    key = (id(lab.sources), entry.id, entry.stamp, id(run))
    with _PROBES_LOCK:
        if key in _PROBES:
            _PROBES.move_to_end(key)
            return _PROBES[key]
    input_size = tuple(run.info.input_size)
    layers = shown_layers(run.model, input_size)
    found = {"layers": layers, "gradcam": gradcam_layer(run.model, input_size)}
    found["scales"] = layer_scales(run, [layer["name"] for layer in layers])
    with _PROBES_LOCK:
        _PROBES[key] = found
        while len(_PROBES) > 8:
            _PROBES.popitem(last=False)
    return found


def read(model: nn.Module, x: torch.Tensor, layers: list[str], cam_layer: str):
    """One forward pass with hooks on ``layers`` and the Grad-CAM layer, one backward pass of the predicted
    class's score to that layer: (logits, each layer's output, the Grad-CAM map at the input's resolution
    scaled 0..1). Grad-CAM is computed as :func:`cnnlab.visualize.gradcam` computes it (the tests compare):
    channel weights are the spatially averaged gradients, the map the ReLU of the weighted sum, upsampled
    bilinearly and min-max scaled."""
    from cnnlab.visualize.hooks import capture

    names = list(dict.fromkeys([*layers, cam_layer]))
    x = on_model(model, x).detach().requires_grad_(True)  # the input joins the graph, so a frozen model has one
    with model_lock(model), capture(model, names) as cap, torch.enable_grad():
        logits = model(x)
        cap.check()
        outputs = {n: cap.outputs[n][0].float().cpu() for n in names}
        a = cap.outputs[cam_layer]
        g = cap.gradients(logits[0, int(logits[0].argmax())])[cam_layer]
    cam = F.relu((g.float().mean((2, 3), keepdim=True) * a.float()).sum(1, keepdim=True))
    up = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[0, 0]
    span = float(up.max() - up.min())
    up = (up - up.min()) / span if span > 0 else torch.zeros_like(up)
    return logits.detach()[0].float().cpu(), outputs, up.detach().cpu()


def layer_pictures(layer: dict, a: torch.Tensor, scale: tuple[float, float] | None) -> dict:
    """A layer's output as small heat maps, one per channel, all on the layer's one colour scale (a vector,
    or maps of 1x1, as one strip)."""
    from cnnlab.lab.pictures import heat_url

    a = a.numpy()
    lo, hi = scale if scale else _symmetric(float(a.min()), float(a.max()))
    cmap = "RdBu_r" if lo < 0 < hi else "viridis"
    out = {**layer, "lo": lo, "hi": hi, "cmap": cmap, "fixed": scale is not None}
    if a.ndim == 3 and a.shape[1] * a.shape[2] > 1:
        out["maps"] = [heat_url(m, lo, hi, cmap) for m in a]
    else:
        out["strip"] = heat_url(a.reshape(1, -1), lo, hi, cmap)
    return out


def mnist_run(run, source: str):
    """A refusal in one sentence unless the run reads MNIST's digits the way this page prepares them."""
    view = run.info.view
    if view.data != "mnist" or view.channels != 1 or run.info.untrained:
        what = "untrained weights" if run.info.untrained else f"a run on {view.data}"
        raise LabError(f"{source} is {what}; this page reads handwritten digits: pick a run trained on mnist")


def _predict(lab, request, body: dict) -> dict:
    from cnnlab.data.sources import spec
    from cnnlab.lab.pictures import image_url, overlay_url

    start = time.perf_counter()
    if not isinstance(body, dict):
        raise LabError("send the drawing as JSON: {source, size, pixels}")
    source = body.get("source")
    run = lab.sources.open(source)
    mnist_run(run, source)
    found = probe(lab, source, run)
    canvas = decode_canvas(body)
    field = spec(run.info.view.data).size
    digit = mnist_digit(canvas, field)
    x = network_input(digit, run.info.view)
    prepared = time.perf_counter()
    names = [layer["name"] for layer in found["layers"]]
    logits, outputs, cam = read(run.model, x, names, found["gradcam"])
    computed = time.perf_counter()
    p = F.softmax(logits, 0)
    top = p.topk(min(3, p.numel()))
    classes = run.info.classes
    pad = (x.shape[-1] - field) // 2
    image = digit.astype(np.float32) / 255
    zoom = 8
    overlay = overlay_url(image.repeat(zoom, 0).repeat(zoom, 1), cam[pad:pad + field, pad:pad + field].numpy())
    pred = int(top.indices[0])
    result = {
        "source": source, "digit": image_url(image), "field": field, "input": list(x.shape[1:]), "pad": pad,
        "mean": list(run.info.view.stats()[0]), "std": list(run.info.view.stats()[1]),
        "top": [{"index": int(i), "class": classes[int(i)], "p": float(v)} for v, i in zip(top.values, top.indices)],
        "layers": [layer_pictures(layer, outputs[layer["name"]], found["scales"].get(layer["name"]))
                   for layer in found["layers"]],
        "gradcam": {"layer": found["gradcam"], "index": pred, "class": classes[pred], "overlay": overlay},
    }
    done = time.perf_counter()
    result["ms"] = {"prepare": round((prepared - start) * 1000, 1), "network": round((computed - prepared) * 1000, 1),
                    "pictures": round((done - computed) * 1000, 1), "total": round((done - start) * 1000, 1)}
    return result


# ------------------------------------------------------------------------------------------- a first run

_CHILDREN: set = set()


def train_command(out: Path) -> list[str]:
    """The training the page offers when there is no run on MNIST: plain ``cnnlab train`` in a subprocess
    (the lab stays responsive, and the run folder is exactly what the command line writes)."""
    return [sys.executable, "-m", "cnnlab", "train", *TRAIN_ARGS, "--out", str(out), "--quiet"]


def progress(folder: Path) -> tuple[int, int | None, str]:
    """(epochs done, epochs in all, one line) from a run folder being written: its config.json gives the
    length, its metrics.jsonl the last step and each finished epoch's test accuracy."""
    try:
        total = int(json.loads((folder / "config.json").read_text())["recipe_settings"]["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        total = None
    from cnnlab.fileio import read_jsonl

    records = read_jsonl(folder / "metrics.jsonl")  # a line being written is skipped, not the whole file
    epochs = [r for r in records if r.get("kind") == "epoch"]
    steps = [r for r in records if r.get("kind") == "step"]
    parts = []
    if steps:
        s = steps[-1]
        parts.append(f"epoch {s.get('epoch')}{f' of {total}' if total else ''}, step {s.get('step')}, "
                     f"loss {float(s.get('loss', float('nan'))):.3f}")
    if epochs and epochs[-1].get("eval_top1") is not None:
        parts.append(f"test accuracy after epoch {epochs[-1]['epoch']}: {float(epochs[-1]['eval_top1']):.2f}%")
    return len(epochs), total, "; ".join(parts) or "starting (loading MNIST, building LeNet-5)"


def _training(runs: Path, out: Path, job) -> dict:
    """The job: start ``cnnlab train``, report its progress from the run folder until it exits."""
    from cnnlab.lab.sources import run_id

    job.message = "starting"
    command = train_command(out)
    with tempfile.TemporaryFile() as err:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=os.environ.copy())
        _CHILDREN.add(child)
        try:
            while child.poll() is None:
                job.done, total, job.message = progress(out)
                job.total = total or 0
                time.sleep(0.5)
        finally:
            _CHILDREN.discard(child)
        err.seek(0)
        lines = [line for line in err.read().decode("utf-8", "replace").splitlines() if line.strip()]
    if child.returncode != 0:
        raise LabError(f"the training stopped (exit code {child.returncode}): "
                       f"{lines[-1] if lines else 'it printed nothing'}")
    job.done, total, job.message = progress(out)
    job.total = total or job.done
    label = out.relative_to(runs).as_posix()
    return {"source": run_id(label), "label": label, "message": job.message}


def _stop_children() -> None:
    """The server stopping stops the trainings it started (their run folders keep what they wrote)."""
    for child in list(_CHILDREN):
        if child.poll() is None:
            child.terminate()


def _train(lab, request, body: dict) -> dict:
    if lab.runs is None:
        raise LabError("the lab was started without --runs, so a training has nowhere to go: restart it with "
                       "`cnnlab serve --runs runs`")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = lab.runs / f"lenet5-{stamp}"
    n = 1
    while out.exists():
        n += 1
        out = lab.runs / f"lenet5-{stamp}-{n}"
    job = lab.jobs.start("train", TRAIN_KEY, lambda job: _training(lab.runs, out, job))
    return job.as_dict()


atexit.register(_stop_children)


def _train_info(lab, request) -> dict:
    """The training the page offers, as the command line it runs (and whether the lab has somewhere to put it)."""
    runs = lab.runs.name if lab.runs else "runs"
    return {"runs": lab.runs is not None,
            "command": " ".join(["cnnlab", "train", *TRAIN_ARGS, "--out", f"{runs}/lenet5-TIME", "--quiet"])}


def routes():
    from starlette.routing import Route

    from cnnlab.lab.web import api

    return [Route("/api/draw/train", api(_train_info), methods=["GET"]),
            Route("/api/draw/predict", api(_predict), methods=["POST"]),
            Route("/api/draw/train", api(_train), methods=["POST"])]
