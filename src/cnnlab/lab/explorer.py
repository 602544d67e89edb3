"""The image explorer's endpoints: one image (a test image of the run's dataset, by index, or an upload, by the
id the server gave it) through one network, panel by panel: top-5, the feature maps of any layer, the kernels
of any convolution, saliency and Grad-CAM for any class, and the top-9 patches of one unit over the evaluation
images (a background job whose result is cached in the run folder).

Every picture comes from the library (:mod:`cnnlab.visualize`), on an image prepared as ``cnnlab predict``
prepares a file (:func:`cnnlab.data.view.prepare_image`) or as the evaluation loader serves it; each answer
carries the ``cnnlab`` command that writes the same picture as a file.

Requests on one model take turns (a per-model lock): the visualisations hook the model while they run, and
a concurrent forward pass of another request would pass through those hooks. The top-9 job works on its own
copy of the model, so a long pass over the test set never blocks the page.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import threading
from pathlib import Path

import numpy as np

from cnnlab.lab.web import LabError, query
from cnnlab.lab.sources import model_lock, on_model

TOP_K = 5
K = 9  # top-9
STRIP_MAX = 64  # thumbnails per page of the strip
FILTER_MAX = 64  # kernels (rows) and input channels (columns) drawn of a deep layer


class State:
    """The explorer's memory in one server: uploads, layer listings, top-9 results of sources without a folder."""

    def __init__(self):
        from cnnlab.lab.images import Uploads

        self.uploads = Uploads()
        self.layers: dict[tuple, list] = {}
        self.twins: dict[tuple, object] = {}
        self.top9: dict[tuple, dict] = {}
        self.lock = threading.Lock()


def state(lab) -> State:
    return lab.__dict__.setdefault("explorer", State())


# ------------------------------------------------------------------------------------------------ the image

def _source(lab, request):
    """(entry, run) of the ``source`` query parameter: an id from the lab's list, never a path."""
    source_id = query(request, "source", "")
    entry = lab.sources.entry(source_id)
    return entry, lab.sources.open(entry.id)


def _index(request, n: int) -> int:
    raw = query(request, "image", "")
    if not raw.isdigit():
        raise LabError(f"`image` must be a test image's index (0 to {n - 1}) or an upload's id, got {raw!r}")
    i = int(raw)
    if i >= n:
        raise LabError(f"image {i} is out of range; the test set has {n} images, 0 to {n - 1}")
    return i


def test_input(data, i: int):
    """Test image ``i`` as the evaluation loader serves it: (1 x C x H x W normalised, its label)."""
    if data.view.is_folder:
        x, label = data.dataset[i]
        return x[None], int(label)
    from cnnlab.data.memory import pad_to

    ds = data.dataset
    return data.loader.normalise(pad_to(ds.images[i:i + 1], data.view.pad_to)), int(ds.labels[i])


def _image(lab, request, entry, run) -> tuple:
    """The image the request names, prepared for ``run``: (x 1 x C x H x W, about: dict for the page)."""
    from cnnlab.data.view import display
    from cnnlab.lab import images
    from cnnlab.lab.pictures import data_url, image_url, png

    ref = query(request, "image", "")
    view = run.info.view
    if ref.startswith("u-"):
        upload = state(lab).uploads.get(ref)
        x = images.prepare(upload, view)
        about = {"kind": "upload", "id": upload.id, "name": upload.name, "file": upload.name,
                 "note": images.note(upload, view), "truth": None, "size": list(upload.size)}
    else:
        data = lab.sources.images(entry.id)
        i = _index(request, len(data))
        x, label = test_input(data, i)
        file = f"{_slug(view.data)}-{data.split}-{i}.png"
        about = {"kind": "test", "index": i, "name": f"{data.split} image {i}", "file": file, "note": "",
                 "truth": data.classes[label] if 0 <= label < len(data.classes) else str(label)}
        if not view.is_folder:  # the file at its own size: `cnnlab predict` prepares it exactly as the loader did
            raw = data.dataset.images[i].permute(1, 2, 0).numpy()
            about["download"] = data_url(png(raw[..., 0] if raw.shape[2] == 1 else raw))
        else:
            about["download"] = image_url(display(x, view))
            about["note"] = "the picture saved is the crop the network sees; the CLI crops it again"
    about["url"] = image_url(display(x, view))
    return x, about


def _slug(data: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", data.split(":", 1)[-1].rstrip("/").rsplit("/", 1)[-1] or "image")


# --------------------------------------------------------------------------------------------------- layers

def twin(lab, entry, run):
    """The run's architecture on the meta device: traced for layer shapes at no cost (as figures.py does)."""
    import torch

    st = state(lab)
    key = (entry.id, entry.stamp)
    if key not in st.twins:
        with torch.device("meta"):
            st.twins[key] = run.info.build()
    return st.twins[key]


def spatial_layers(lab, entry, run, shape) -> list[dict]:
    """Every layer whose output is a stack of maps (C x H x W), in the order they finish, with its shape."""
    from cnnlab.visualize.layers import trace

    st = state(lab)
    key = (entry.id, entry.stamp, tuple(shape))
    if key not in st.layers:
        try:
            calls = trace(twin(lab, entry, run), tuple(shape))
        except Exception:  # noqa: BLE001 - a model the meta device cannot run: trace the real one
            with model_lock(run.model):
                calls = trace(run.model, tuple(shape))
        seen = {}
        for c in calls:  # a module called twice (a shared activation) is listed where its last call ends:
            if len(c.shape) == 3:  # that is the output the hooks capture
                seen.pop(c.name, None)
                seen[c.name] = {"name": c.name, "type": type(c.module).__name__, "shape": list(c.shape)}
        st.layers[key] = list(seen.values())
    return st.layers[key]


def _layer(request, name: str, layers: list[dict], default: str) -> dict:
    chosen = query(request, name, "") or default
    found = next((lay for lay in layers if lay["name"] == chosen), None)
    if found is None:
        shown = ", ".join(lay["name"] for lay in layers[:15]) + (", ..." if len(layers) > 15 else "")
        raise LabError(f"the model has no layer {chosen!r} with maps; its layers with maps are: {shown}")
    return found


# ------------------------------------------------------------------------------------------------- commands

def cli_source(lab, entry) -> str | None:
    """How the CLI names this source: the run folder (relative to here when inside), the model's name, or
    None for torchvision's weights (the CLI draws run folders and untrained models only)."""
    if entry.kind == "run":
        path = str(entry.path)
        try:
            rel = os.path.relpath(path)
            path = rel if not rel.startswith("..") else path
        except ValueError:
            pass
        return shlex.quote(path)
    if entry.kind == "model":
        return entry.model
    return None


def command(lab, entry, what: str, *args: str) -> str:
    """``cnnlab WHAT RUN ARGS``, or a line saying how to get the picture where the CLI cannot."""
    src = cli_source(lab, entry)
    if src is None:
        return (f"# the cnnlab CLI draws run folders and untrained models, not torchvision's weights; in Python: "
                f"cnnlab.create_model({entry.model!r}, pretrained=True) with cnnlab.visualize")
    if what == "predict" and entry.kind == "model":
        return f"# `cnnlab predict` reads trained runs; an untrained {entry.model} predicts noise"
    return " ".join(["cnnlab", what, src, *[shlex.quote(a) for a in args]])


# -------------------------------------------------------------------------------------------------- endpoints

def _images(lab, request) -> dict:
    """A page of the strip: thumbnails of the test images ``offset`` .. ``offset + count``."""
    from cnnlab.lab.pictures import image_url

    entry, run = _source(lab, request)  # a source that cannot be opened (weights not here) is the page's error
    try:
        data = lab.sources.images(entry.id)
    except LabError as e:  # no test images of its own (torchvision's, an untrained model): uploads only
        return {"total": 0, "offset": 0, "count": 0, "split": None, "data": None, "images": [], "note": str(e)}
    n = len(data)
    offset = query(request, "offset", 0, int, low=0, high=max(n - 1, 0))
    count = query(request, "count", 24, int, low=1, high=STRIP_MAX)
    items = []
    for i in range(offset, min(offset + count, n)):
        items.append({"index": i, "url": image_url(data.image(i))})
    return {"total": n, "offset": offset, "count": count, "split": data.split, "data": run.info.view.data,
            "images": items}


def _upload(lab, request, body: bytes = b"") -> dict:
    """An image file as the body: decoded (images only), kept in memory, answered with its id."""
    from cnnlab.lab import images
    from cnnlab.lab.pictures import image_url

    kind = request.headers.get("content-type", "")
    if kind and not (kind.startswith("image/") or kind.startswith("application/octet-stream")):
        raise LabError(f"upload the image file itself (content-type image/...), not {kind.split(';')[0]}", 415)
    upload = state(lab).uploads.add(images.decode(body, request.query_params.get("name")))
    out = {"id": upload.id, "name": upload.name, "format": upload.format, "mode": upload.mode,
           "size": list(upload.size), "note": ""}
    source_id = request.query_params.get("source")
    if source_id:  # the note for the network it will be shown to
        out["note"] = images.note(upload, lab.sources.open(lab.sources.entry(source_id).id).info.view)
    thumb = upload.image.copy()
    thumb.thumbnail((128, 128))
    out["url"] = image_url(np.asarray(thumb, dtype=np.float32) / 255)
    return out


def _predict(lab, request) -> dict:
    """The image, the top-5 classes with their softmax probabilities, and the layers that have maps."""
    import torch
    import torch.nn.functional as F

    from cnnlab.visualize.filters import conv_layers
    from cnnlab.visualize.layers import gradcam_layer

    entry, run = _source(lab, request)
    x, about = _image(lab, request, entry, run)
    with model_lock(run.model), torch.no_grad():
        logits = run.model(on_model(run.model, x)).float().cpu()
    p = F.softmax(logits, 1)[0]
    top = p.topk(min(TOP_K, p.numel()))
    classes = list(run.info.classes)
    layers = spatial_layers(lab, entry, run, x.shape[1:])
    convs = conv_layers(run.model)
    names = {lay["name"] for lay in layers}
    default = next((c for c in convs if c in names), layers[0]["name"] if layers else None)
    return {"source": entry.id, "name": run.name, "image": about,
            "top5": [{"index": int(i), "class": classes[int(i)], "p": float(v)} for v, i in zip(top.values,
                                                                                            top.indices)],
            "predicted": int(top.indices[0]), "layers": layers, "default_layer": default,
            "conv_layers": convs, "gradcam_layer": gradcam_layer(twin(lab, entry, run), tuple(x.shape[1:])),
            "classes": classes,
            "command": command(lab, entry, "predict", about["file"])}


def _features(lab, request) -> dict:
    """Every channel of one layer as a small heat map, all on the layer's one colour scale (its lo..hi)."""
    from cnnlab.lab.pictures import heat_url
    from cnnlab.visualize.features import feature_maps

    entry, run = _source(lab, request)
    x, about = _image(lab, request, entry, run)
    layers = spatial_layers(lab, entry, run, x.shape[1:])
    if not layers:
        raise LabError(f"{run.name} has no layer with feature maps")
    layer = _layer(request, "layer", layers, layers[0]["name"])["name"]
    with model_lock(run.model):
        maps = feature_maps(run.model, x[0], [layer])[layer]
    lo, hi = float(maps.min()), float(maps.max())
    return {"layer": layer, "shape": list(maps.shape), "lo": lo, "hi": hi, "cmap": "viridis",
            "maps": [heat_url(m, lo, hi) for m in maps],
            "legend": heat_url(np.linspace(lo, hi, 256, dtype=np.float32)[None].repeat(10, 0), lo, hi),
            "command": command(lab, entry, "visualize features", about["file"], "--layer", layer)}


def _filters(lab, request) -> dict:
    """A convolution's kernels: the first layer of a colour network in colour, a deeper one per input channel."""
    from cnnlab.lab.pictures import image_url
    from cnnlab.visualize.filters import conv_layers, filters, mosaic

    entry, run = _source(lab, request)
    convs = conv_layers(run.model)
    if not convs:
        raise LabError(f"{run.name} has no convolution")
    layer = query(request, "layer", "") or convs[0]
    if layer not in convs:
        raise LabError(f"{layer!r} is not a convolution of {run.name}; its first ones are {', '.join(convs[:8])}")
    kernels = filters(run.model, layer)
    out, cin = kernels.weight_shape[:2]
    tiles, grid, note = kernels.tiles, kernels.grid, ""
    if kernels.kind == "slices" and (out > FILTER_MAX or cin > FILTER_MAX):
        rows, cols = min(out, FILTER_MAX), min(cin, FILTER_MAX)
        tiles = tiles.reshape(out, cin, *tiles.shape[1:])[:rows, :cols].reshape(rows * cols, *tiles.shape[1:])
        grid, note = (rows, cols), (f"the first {rows} of {out} kernels and {cols} of their {cin} input channels "
                                    f"are drawn")
    kh = tiles.shape[1]
    scale = max(1, min(12, 36 // max(kh, 1)))
    canvas = mosaic(tiles, grid, gap=1, fill=1.0)
    return {"layer": layer, "kind": kernels.kind, "weight_shape": list(kernels.weight_shape), "grid": list(grid),
            "url": image_url(canvas, scale), "note": note, "conv_layers": convs,
            "command": command(lab, entry, "visualize filters", "--layer", layer)}


def _attribution(lab, request) -> dict:
    """Saliency and Grad-CAM of one class (default: the predicted one) over the image."""
    from cnnlab.data.view import display
    from cnnlab.lab.pictures import heat_url, overlay_url
    from cnnlab.visualize.attribution import gradcam, saliency
    from cnnlab.visualize.layers import gradcam_layer

    entry, run = _source(lab, request)
    x, about = _image(lab, request, entry, run)
    classes = list(run.info.classes)
    target = query(request, "target", -1, int, low=-1, high=len(classes) - 1)
    target = None if target < 0 else target
    layers = spatial_layers(lab, entry, run, x.shape[1:])
    default = gradcam_layer(twin(lab, entry, run), tuple(x.shape[1:]))
    layer = _layer(request, "layer", layers, default)["name"]
    with model_lock(run.model):
        sal = saliency(run.model, x[0], target, normalize="max")
        cam = gradcam(run.model, x[0], layer, target)
    image = display(x, run.info.view)
    t = int(cam.target)
    return {"target": t, "class": classes[t], "probability": float(cam.probability), "predicted": int(cam.predicted),
            "layer": layer, "image": about["url"],
            "saliency": heat_url(sal.map, 0.0, 1.0, "inferno"), "gradcam": overlay_url(image, cam.map),
            "gradcam_raw": np.asarray(cam.raw).tolist(),
            "commands": {"saliency": command(lab, entry, "visualize saliency", about["file"], "--target", str(t)),
                         "gradcam": command(lab, entry, "visualize gradcam", about["file"], "--layer", layer,
                                            "--target", str(t))}}


# ----------------------------------------------------------------------------------------------------- top-9

def _cache_file(entry, layer: str) -> Path | None:
    if entry.kind != "run" or entry.path is None:
        return None
    return entry.path / "lab" / f"top9-{re.sub(r'[^A-Za-z0-9_.-]', '_', layer)}.npz"


def _meta(entry, data) -> dict:
    return {"stamp": entry.stamp, "data": data.view.data, "split": data.split, "images": len(data), "k": K}


def _load_cache(lab, entry, layer: str, meta: dict) -> dict | None:
    """The layer's top-9 of every channel from the run folder (or memory), if made for this checkpoint and data."""
    st = state(lab)
    hit = st.top9.get((entry.id, layer))
    if hit is not None and hit["meta"] == meta:
        return hit
    path = _cache_file(entry, layer)
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if json.loads(str(arrays.pop("meta"))) != meta:
            return None  # a newer checkpoint, or other data: made again
    except (OSError, ValueError, KeyError):
        return None  # a cut or foreign file: made again
    found = {"meta": meta, **arrays}
    st.top9[(entry.id, layer)] = found
    return found


def _save_cache(lab, entry, layer: str, found: dict) -> None:
    from cnnlab.fileio import atomic_open

    state(lab).top9[(entry.id, layer)] = found
    path = _cache_file(entry, layer)
    if path is None:
        return
    arrays = {k: v for k, v in found.items() if k != "meta"}
    try:
        with atomic_open(path, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(found["meta"])), **arrays)
    except OSError:
        pass  # a read-only run folder: the result stays in memory


def _channel_result(lab, entry, data, layer: str, found: dict, channel: int, cached: bool) -> dict:
    """The top-9 patches of one channel, from a layer's cached result, with the library's patch cutter."""
    from cnnlab.lab.pictures import image_url
    from cnnlab.visualize.top9 import TopImages

    c = channel
    res = TopImages(layer, [c], found["values"][c:c + 1], found["indices"][c:c + 1], found["positions"][c:c + 1],
                    found["boxes"][c:c + 1], None, tuple(int(v) for v in found["image_size"]))
    patches = res.patches(data.image)[0]
    labels = [data.classes[int(test_input_label(data, int(i)))] for i in res.indices[0]]
    return {"layer": layer, "channel": c, "channels": int(found["values"].shape[0]), "cached": cached,
            "values": [float(v) for v in res.values[0]], "indices": [int(i) for i in res.indices[0]],
            "labels": labels, "patches": [image_url(p) for p in patches],
            "box": [int(patches.shape[1]), int(patches.shape[2])] if len(patches) else [0, 0],
            "data": data.view.data, "split": data.split, "images": len(data),
            "command": command(lab, entry, "visualize top9", "--layer", layer, "--channels", str(c))}


def test_input_label(data, i: int) -> int:
    if data.view.is_folder:
        return int(data.dataset[i][1])
    return int(data.dataset.labels[i])


def _top9(lab, request, body: dict | None = None) -> dict:
    """The top-9 patches of a unit (layer + channel): from the cache at once, else a job the page polls."""
    body = body or {}
    entry = lab.sources.entry(body.get("source"))
    run = lab.sources.open(entry.id)
    data = lab.sources.images(entry.id)
    layer, channel = body.get("layer"), body.get("channel", 0)
    if not isinstance(layer, str) or not layer:
        raise LabError("say which layer's units to search (`layer`)")
    if isinstance(channel, bool) or not isinstance(channel, int):
        raise LabError(f"`channel` must be a whole number, got {channel!r}")
    x, _ = test_input(data, 0)
    layers = spatial_layers(lab, entry, run, x.shape[1:])
    shape = next((lay["shape"] for lay in layers if lay["name"] == layer), None)
    if shape is None:
        raise LabError(f"{run.name} has no layer {layer!r} with maps; pick one from the layer list")
    if not 0 <= channel < shape[0]:
        raise LabError(f"channel {channel} is out of range; {layer} has {shape[0]} channels, 0 to {shape[0] - 1}")
    meta = _meta(entry, data)
    found = _load_cache(lab, entry, layer, meta)
    if found is not None:
        return {"state": "done", "result": _channel_result(lab, entry, data, layer, found, channel, True)}

    def work(job):
        found = search(run.model, data, layer, shape[0], job)
        found["meta"] = meta
        _save_cache(lab, entry, layer, found)
        return _channel_result(lab, entry, data, layer, found, channel, False)

    job = lab.jobs.start("top9", f"top9:{entry.id}:{entry.stamp}:{layer}", work)
    return {"state": "running", "job": job.as_dict()}


def search(model, data, layer: str, channels: int, job=None) -> dict:
    """The library's top-9 (:func:`cnnlab.visualize.top_images`) of every channel of ``layer`` over ``data``,
    on a copy of the model (the page's requests keep using the original), counting images into ``job``."""
    from cnnlab.visualize.top9 import top_images

    model = copy.deepcopy(model)
    if job is not None:
        job.total, job.done = len(data), 0

    def batches():
        for x, y in data.loader:
            yield x
            if job is not None:
                job.done += len(x)

    res = top_images(model, batches(), layer, list(range(channels)), K)
    return {"values": res.values.astype(np.float32), "indices": res.indices.astype(np.int64),
            "positions": res.positions.astype(np.int64), "boxes": res.boxes.astype(np.int64),
            "image_size": np.array(res.image_size, dtype=np.int64)}


def routes():
    from starlette.routing import Route

    from cnnlab.lab.web import api

    return [Route("/api/explorer/images", api(_images)),
            Route("/api/explorer/upload", api(_upload), methods=["POST"]),
            Route("/api/explorer/predict", api(_predict)),
            Route("/api/explorer/features", api(_features)),
            Route("/api/explorer/filters", api(_filters)),
            Route("/api/explorer/attribution", api(_attribution)),
            Route("/api/explorer/top9", api(_top9), methods=["POST"])]
