"""The conv-arithmetic playground (/playground) and the receptive-field page (/rf).

Every number shown comes from the library the CLI uses: ``cnnlab calc conv|pool`` is
:mod:`cnnlab.analysis.conv_arith`, ``cnnlab explain pool`` is :mod:`cnnlab.scratch.explain` with the NumPy
layers, and a layer's receptive field is the inspector's (:func:`cnnlab.analysis.summary.summary`). The pages
draw; they do not recompute.

The effective receptive field (Luo et al. 2016, "Understanding the effective receptive field in deep
convolutional neural networks") is computed here: the gradient of one output unit with respect to the input,
its magnitude summed over the input's channels and averaged over images. Outside the theoretical field it is
exactly zero, which the tests check.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from fractions import Fraction

import numpy as np

from cnnlab.lab.web import LabError, query
from cnnlab.lab.sources import model_lock, on_model

ERF_IMAGES = 32  # images the effective field is averaged over (8 for inputs above 64 pixels: CPU seconds)
ERF_IMAGES_LARGE = 8
DRAW_LIMIT = 512  # the playground draws the sliding window up to this padded size a side


# ------------------------------------------------------------------------------------------------ playground

def _conv_flags(r) -> str:
    """The `cnnlab calc` command giving the same numbers (defaults left out, as a user would type it)."""
    h, w, c = r.input
    parts = [f"cnnlab calc {r.kind} --input {h}x{w}x{c}"]
    if r.kind == "conv":
        parts.append(f"--filters {r.filters}")
    parts.append(f"--kernel {r.kernel}")
    if r.kind == "conv" and r.stride != 1 or r.kind == "pool" and r.stride != r.kernel:
        parts.append(f"--stride {r.stride}")
    if r.pad:
        parts.append(f"--pad {r.pad}")
    if r.kind == "conv":
        parts += [f"--dilation {r.dilation}"] * (r.dilation != 1) + [f"--groups {r.groups}"] * (r.groups != 1)
    else:
        parts += ["--ceil-mode"] * r.height.ceil_mode + [f"--op {r.op}"] * (r.op != "max")
    return " ".join(parts)


def _axis(a) -> dict:
    """One axis with its working, for the page to lay out (the same strings `calc`'s text prints)."""
    return {"size": a.size, "kernel": a.kernel, "stride": a.stride, "pad": a.pad, "out": a.out,
            "exact": float(a.exact), "fits": a.fits, "formula": a.formula, "ceil_mode": a.ceil_mode,
            "fits_pad": [{"pad": p, "out": (a.size - a.kernel + 2 * p) // a.stride + 1} for p in a.fits_pad],
            "fits_stride": [{"stride": s, "out": (a.size - a.kernel + 2 * a.pad) // s + 1} for s in a.fits_stride],
            # the first padded row/column no window reaches (rounded down), or None when all are covered
            "uncovered_from": None if a.fits or a.ceil_mode else (a.out - 1) * a.stride + a.kernel}


def arithmetic(report) -> dict:
    """A :class:`~cnnlab.analysis.conv_arith.ConvReport` as the page shows it: ``report`` is exactly the JSON of
    ``cnnlab calc ... --format json``, ``text`` exactly its text."""
    what = "filter" if report.kind == "conv" else "window"
    same = report.height.size == report.width.size
    misfit = (report.height.explain_misfit("height and width", what) if same
              else report.height.explain_misfit(what=what) + report.width.explain_misfit(what=what))
    return {"report": report.as_dict(), "text": report.text(), "command": _conv_flags(report),
            "height": _axis(report.height), "width": _axis(report.width), "misfit": [m.strip() for m in misfit],
            "outputs": report.outputs, "filters": report.filters, "op": report.op,
            "drawable": max(report.height.size, report.width.size) + 2 * report.pad <= DRAW_LIMIT}


def _input(request) -> str:
    text = query(request, "input", "")
    if not text:
        raise LabError("the request needs `input` as HxWxC, e.g. 227x227x3")
    return text[:200]


def _conv(lab, request) -> dict:
    from cnnlab.analysis.conv_arith import conv

    return arithmetic(conv(_input(request), query(request, "filters", None, int), query(request, "kernel", None, int),
                           query(request, "stride", 1, int), query(request, "pad", 0, int),
                           query(request, "dilation", 1, int), query(request, "groups", 1, int)))


def _pool(lab, request) -> dict:
    from cnnlab.analysis.conv_arith import pool

    # no stride: the window size, as PyTorch; 0 goes to the library, which says why not
    stride = query(request, "stride", None, int) if request.query_params.get("stride") else None
    ceil = query(request, "ceil_mode", "0") in ("1", "true", "yes")
    return arithmetic(pool(_input(request), query(request, "kernel", None, int), stride,
                           query(request, "pad", 0, int), ceil, query(request, "op", "max")))


def pool_example(size: int = 2, stride: int | None = None, op: str = "max") -> dict:
    """``cnnlab explain pool`` on the lecture's 4x4 input: x, y, each output's argmax, the Jacobian A (vec(y) =
    A vec(x), row-major) and dL/dx = A^T dL/dy for the example upstream gradient 1, 2, ... (the CLI's).
    Values from the NumPy layers and :func:`~cnnlab.scratch.layers.pool_jacobian`, not recomputed."""
    from cnnlab.scratch.explain import POOL_4X4, explain_pool
    from cnnlab.scratch.layers import AvgPool2d, MaxPool2d, pool_jacobian

    text = explain_pool(None, size, stride, op)  # checks size, stride and fit, with the CLI's sentences
    x = np.array(POOL_4X4, dtype=np.float64)
    stride = size if stride is None else stride
    layer = (MaxPool2d if op == "max" else AvgPool2d)(size, stride)
    y = layer.forward(x[None, None])[0, 0]
    a = pool_jacobian(x, size, stride, op)
    g = np.arange(1, y.size + 1, dtype=np.float64).reshape(1, 1, *y.shape)
    dx = layer.backward(g)[0, 0]
    w = x.shape[1]
    argmax = [[int(c) // w, int(c) % w] for c in a.argmax(1)] if op == "max" else None
    return {"x": x.tolist(), "y": y.tolist(), "jacobian": a.tolist(), "argmax": argmax, "grad": g[0, 0].tolist(),
            "dx": dx.tolist(), "size": size, "stride": stride, "op": op, "text": text,
            "columns": [f"x{p}{q}" for p in range(x.shape[0]) for q in range(w)],
            "rows": [f"y{i}{j}" for i in range(y.shape[0]) for j in range(y.shape[1])],
            "command": f"cnnlab explain pool --size {size}" + (f" --stride {stride}" if stride != size else "")
                       + (f" --op {op}" if op != "max" else "")}


def _explain_pool(lab, request) -> dict:
    size = query(request, "size", 2, int, low=1, high=4)
    stride = query(request, "stride", size, int, low=1, high=4)
    op = query(request, "op", "max")
    if op not in ("max", "avg"):
        raise LabError(f"`op` must be max or avg, not {op[:20]!r}")
    return pool_example(size, stride, op)


# ------------------------------------------------------------------------------------------ receptive fields

class _Cache:
    """A few summaries and effective fields per server, newest kept (a click should not re-run GoogLeNet)."""

    def __init__(self, size: int):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key, make):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = make()
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value


_SUMMARIES = _Cache(8)
_ERFS = _Cache(32)


def _num(x):
    x = Fraction(x)
    return int(x) if x.denominator == 1 else float(x)


def spatial_layers(s) -> list[tuple[str, object]]:
    """(key, row) of every module whose output is one C x H x W map with a known, spatial receptive field. A
    module called more than once (a shared ReLU) gets one key per call: ``name``, ``name@2``, ..."""
    seen: dict[str, int] = {}
    out = []
    for row in s.rows:
        if row.depth == 0:
            continue
        seen[row.name] = seen.get(row.name, 0) + 1
        shape = row.output_shape
        if row.rf is None or not row.rf.spatial or len(shape) != 3 or not all(isinstance(v, int) for v in shape):
            continue
        key = row.name if seen[row.name] == 1 else f"{row.name}@{seen[row.name]}"
        out.append((key, row))
    return out


def unit_box(rf, cell: tuple[int, int], input_hw: tuple[int, int]) -> dict:
    """The input pixels output unit ``cell`` = (i, j) sees, per the inspector's field: centre = start +
    index * jump, ``size`` pixels around it. ``box`` is in pixel-edge coordinates (pixel k spans [k, k+1)), so
    an SVG rect with these attributes covers exactly those pixels; ``clipped`` is its part on the image, the
    rest lies in padding (zeros the network adds)."""
    edges = []
    for axis, index in enumerate(cell):
        centre = rf.start[axis] + index * rf.jump[axis]
        lo = centre - (rf.size[axis] - 1) / Fraction(2)
        edges.append((centre, lo, lo + rf.size[axis]))
    (cy, top, bottom), (cx, left, right) = edges
    h, w = input_hw
    ctop, cleft, cbottom, cright = max(top, 0), max(left, 0), min(bottom, h), min(right, w)
    return {"centre": [_num(cy), _num(cx)],
            "box": {"x": _num(left), "y": _num(top), "width": _num(right - left), "height": _num(bottom - top)},
            "clipped": {"x": _num(cleft), "y": _num(ctop), "width": _num(max(cright - cleft, 0)),
                        "height": _num(max(cbottom - ctop, 0))},
            "in_padding": bool(top < 0 or left < 0 or bottom > h or right > w)}


def _summary(lab, source_id: str):
    """The inspector's summary of the source's model on its own input size (cached per source and checkpoint).
    A run or an untrained model is inspected by name on the meta device, as `cnnlab summary` does (the command
    the page shows), so the inspector's hooks never touch the cached model another page may be running;
    torchvision's weights come with torchvision's own modules, inspected as they are."""
    from cnnlab.analysis.summary import summary

    entry = lab.sources.entry(source_id)
    run = lab.sources.open(entry.id)
    info = run.info

    def inspect():
        if entry.kind == "torchvision":
            with model_lock(run.model):
                return summary(run.model, tuple(info.input_size))
        return summary(info.model, tuple(info.input_size), num_classes=info.num_classes, **info.model_options)

    return run, _SUMMARIES.get((entry.id, entry.stamp), inspect)


def _layer(s, key: str):
    layers = dict(spatial_layers(s))
    if key not in layers:
        import difflib

        near = difflib.get_close_matches(key, list(layers), n=3, cutoff=0.5)
        raise LabError(f"{s.model} has no layer {key[:80]!r} with a spatial output"
                       + (f"; did you mean {', '.join(near)}?" if near else "; pick one from the table"), 404)
    return layers[key]


def _summary_command(run) -> str:
    c, h, w = run.info.input_size
    classes = "" if run.info.untrained else f" --num-classes {run.info.num_classes}"
    options = "".join(f" --model-option {k}={v}" for k, v in (run.info.model_options or {}).items())
    return f"cnnlab summary {run.info.model} --input {c}x{h}x{w}{classes}{options}"


def _rf_layers(lab, request) -> dict:
    source = query(request, "source", "")
    run, s = _summary(lab, source)
    c, h, w = run.info.input_size
    rows = [{"key": key, "name": row.name, "type": row.type, "depth": row.depth, "leaf": row.is_leaf,
             "output_shape": row.output_shape, "rf": row.rf.as_dict(), "params": row.params}
            for key, row in spatial_layers(s)]
    return {"source": source, "model": s.model, "name": run.name, "input_size": [c, h, w], "layers": rows,
            "trained": not run.info.untrained, "command": _summary_command(run)}


def _cell(request, shape) -> tuple[int, int]:
    raw = query(request, "cell", "0,0")
    try:
        i, j = (int(v) for v in raw.split(","))
    except ValueError:
        raise LabError(f"`cell` must be two whole numbers i,j (the output row and column), got {raw[:40]!r}") from None
    _, oh, ow = shape
    if not (0 <= i < oh and 0 <= j < ow):
        raise LabError(f"cell ({i}, {j}) is outside the layer's {oh}x{ow} output; rows go 0..{oh - 1}, "
                       f"columns 0..{ow - 1}")
    return i, j


def _rf_unit(lab, request) -> dict:
    run, s = _summary(lab, query(request, "source", ""))
    key = query(request, "layer", "")
    row = _layer(s, key)
    cell = _cell(request, row.output_shape)
    _, h, w = run.info.input_size
    return {"layer": key, "cell": list(cell), "output_shape": row.output_shape, "input_hw": [h, w],
            "rf": row.rf.as_dict(), **unit_box(row.rf, cell, (h, w))}


def _test_images(lab, source: str, run):
    """The run's test split, or None and why not: an untrained model or torchvision's weights have none here,
    and a run's dataset may not be on this machine (the page then draws on a stand-in instead of failing)."""
    from cnnlab.errors import CnnlabError

    if run.info.untrained:
        return None, "an untrained model has no test images"
    if run.info.data in ("", "folder:", "imagenet"):
        return None, "no test images of its own on this server"
    try:
        return lab.sources.images(source), ""
    except CnnlabError:
        return None, f"the test images of {run.info.data} are not on this machine"


def _rf_image(lab, request) -> dict:
    """The picture the fields are drawn on: test image ``k`` of a run's dataset, else a checkerboard."""
    from cnnlab.lab.pictures import image_url

    source = query(request, "source", "")
    run = lab.sources.open(source)
    c, h, w = run.info.input_size
    data, why = _test_images(lab, source, run)
    if data is None:
        square = max(2, min(h, w) // 8)
        board = ((np.arange(h)[:, None] // square + np.arange(w)[None, :] // square) % 2) * 0.5 + 0.25
        return {"url": image_url(board), "count": 0, "k": 0, "label": f"a checkerboard ({why})", "size": [h, w]}
    k = query(request, "k", 0, int, low=0, high=len(data) - 1)
    label = data.classes[int(data.dataset.labels[k])] if hasattr(data.dataset, "labels") else ""
    return {"url": image_url(data.image(k)), "count": len(data), "k": k, "size": [h, w],
            "label": f"test image {k}" + (f" ({label})" if label else "")}


class _Stop(Exception):
    """Raised by the hook once the layer's output is taken: the rest of the network is not run."""


def _module(model, name: str):
    modules = dict(model.named_modules())
    if name not in modules:
        raise LabError(f"the model has no module {name!r}")
    return modules[name]


def effective_rf(model, layer: str, cell: tuple[int, int], x, channel: int | None = None) -> np.ndarray:
    """|d unit / d input| summed over the input's channels, averaged over the images of ``x`` (N x C x H x W).
    The unit is output (i, j) of ``layer`` (``name`` or ``name@k``, its k-th call): channel ``channel``, or with
    None the sum over the layer's channels (Luo et al.'s gradient of 1 at the centre of every map)."""
    import torch

    name, _, call = layer.partition("@")
    call = int(call or 1)
    me, taken, calls = threading.get_ident(), [], [0]

    def hook(module, args, output):
        if threading.get_ident() != me:  # another page using the same cached model
            return
        calls[0] += 1
        if calls[0] == call:
            taken.append(output)
            raise _Stop

    handle = _module(model, name).register_forward_hook(hook)
    try:
        with torch.enable_grad():
            x = on_model(model, x).detach().clone().requires_grad_(True)
            try:
                model(x)
            except _Stop:
                pass
            if not taken:
                raise LabError(f"the layer {layer} was not reached by the forward pass")
            y = taken[0]
            i, j = cell
            if channel is not None and not 0 <= channel < y.shape[1]:
                raise LabError(f"channel {channel} is outside the layer's {y.shape[1]} channels")
            unit = y[:, channel, i, j] if channel is not None else y[:, :, i, j].sum(1)
            (grad,) = torch.autograd.grad(unit.sum(), x)
    finally:
        handle.remove()
    return grad.abs().sum(1).mean(0).double().cpu().numpy()


def erf_inputs(lab, source: str, run, n: int):
    """The images the effective field is averaged over: the first ``n`` test images of a run, normalised as
    the network reads them; for a model without its own images, ``n`` standard-normal noise images (seed 0)."""
    import torch

    c, h, w = run.info.input_size
    data, why = _test_images(lab, source, run)
    if data is None:
        g = torch.Generator().manual_seed(0)
        return torch.randn((n, c, h, w), generator=g), f"{n} images of standard-normal noise (seed 0; {why})"
    n = min(n, len(data))
    mean, std = (torch.tensor(v, dtype=torch.float32).view(-1, 1, 1) for v in data.view.stats())
    x = torch.stack([torch.from_numpy(np.ascontiguousarray(data.image(k))).permute(2, 0, 1) for k in range(n)])
    return (x.float() - mean) / std, f"the first {n} test images"


def _rf_effective(lab, request) -> dict:
    from cnnlab.lab.pictures import heat_url

    source = query(request, "source", "")
    run, s = _summary(lab, source)
    key = query(request, "layer", "")
    row = _layer(s, key)
    cell = _cell(request, row.output_shape)
    raw_channel = query(request, "channel", "")
    channel = None if raw_channel in ("", "all") else query(request, "channel", 0, int, low=0,
                                                             high=row.output_shape[0] - 1)
    _, h, w = run.info.input_size
    n = query(request, "n", ERF_IMAGES if max(h, w) <= 64 else ERF_IMAGES_LARGE, int, low=1, high=64)
    entry = lab.sources.entry(source)

    def compute():
        x, images = erf_inputs(lab, source, run, n)
        with model_lock(run.model):  # the other pages put hooks on the same cached model
            return effective_rf(run.model, key, cell, x, channel), images

    erf, images = _ERFS.get((entry.id, entry.stamp, key, cell, channel, n), compute)
    box = unit_box(row.rf, cell, (h, w))["clipped"]
    y0, x0 = int(box["y"]), int(box["x"])
    y1, x1 = int(np.ceil(box["y"] + box["height"])), int(np.ceil(box["x"] + box["width"]))
    total = float(erf.sum())
    inside = float(erf[y0:y1, x0:x1].sum())
    nz = np.argwhere(erf > 0)
    support = None if not len(nz) else {"x": int(nz[:, 1].min()), "y": int(nz[:, 0].min()),
                                        "width": int(nz[:, 1].max() - nz[:, 1].min() + 1),
                                        "height": int(nz[:, 0].max() - nz[:, 0].min() + 1)}
    unit = f"channel {channel}" if channel is not None else f"the sum of its {row.output_shape[0]} channels"
    return {"layer": key, "cell": list(cell), "channel": channel, "images": images, "n": n,
            "url": heat_url(erf, 0.0, float(erf.max()) or 1.0, "inferno"), "max": float(erf.max()),
            "support": support, "inside_fraction": inside / total if total > 0 else None,
            "what": f"|d unit / d input| of output ({cell[0]}, {cell[1]}) of {key}, {unit}, summed over the "
                    f"input's channels and averaged over {images}"}


def _models(lab, request) -> dict:
    from cnnlab.models.registry import list_models

    return {"models": list_models()}


def routes():
    from starlette.routing import Route

    from cnnlab.lab.web import api

    return [Route("/api/playground/conv", api(_conv)), Route("/api/playground/pool", api(_pool)),
            Route("/api/playground/explain-pool", api(_explain_pool)),
            Route("/api/rf/layers", api(_rf_layers)), Route("/api/rf/unit", api(_rf_unit)),
            Route("/api/rf/image", api(_rf_image)), Route("/api/rf/effective", api(_rf_effective)),
            Route("/api/rf/models", api(_models))]
