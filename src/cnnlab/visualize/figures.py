"""The pictures of ``cnnlab visualize``: from a run folder, a checkpoint or a model name to a PNG file.

Runs are opened with :func:`cnnlab.runs.open_model` (a run, or a registered model's initial weights); images
are read and preprocessed exactly as ``cnnlab predict`` reads them (:func:`cnnlab.data.view.load_image`); PNGs
are written atomically with matplotlib's Agg backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlab.data.view import display, load_image, open_data
from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_savefig
from cnnlab.runs import RunInfo, open_model
from cnnlab.visualize.attribution import gradcam, saliency
from cnnlab.visualize.features import feature_maps
from cnnlab.visualize.filters import filters, mosaic
from cnnlab.visualize.layers import feature_layers, gradcam_layer
from cnnlab.visualize.top9 import top_images

MOST_KERNELS = 32  # rows (kernels) and columns (input channels) drawn for a deep layer's kernels
MOST_MAPS = 64  # feature maps drawn per layer


def _twin(info: RunInfo) -> nn.Module:
    """The run's architecture on the meta device: traced for default layers at no cost."""
    with torch.device("meta"):
        return info.build()


def class_index(target: str | int | None, classes: list[str]) -> int | None:
    """``--target``: a class index or a class name."""
    if target is None or isinstance(target, int):
        return target
    if target in classes:
        return classes.index(target)
    try:
        return int(target)
    except ValueError:
        shown = ", ".join(classes[:20]) + (", ..." if len(classes) > 20 else "")
        raise CnnlabError(f"unknown class {target!r}; give an index from 0 to {len(classes) - 1} or a name: {shown}")


def _subplots(*grid, figsize, **kw):
    """A figure of its own and its axes, as pyplot.subplots makes them, without pyplot: pyplot (and
    matplotlib.use) would change the backend of the caller's process, and a notebook would show no more plots."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kw)


def _save(fig, out, default: str) -> Path:
    path = Path(out or default)
    if path.suffix.lower() != ".png":
        raise CnnlabError(f"`out` must be a .png file, got {path}", params=("out",))
    atomic_savefig(fig, path, dpi=100)
    return path


def _show(ax, img: np.ndarray, title: str = "", **kw) -> None:
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        kw.setdefault("cmap", "gray")
    ax.imshow(img, interpolation="nearest", **kw)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def filters_png(source: str, layer: str | None = None, out=None) -> Path:
    run = open_model(source)
    k = filters(run.model, layer)
    oc, ic, kh, kw = k.weight_shape
    if k.kind == "slices":
        rows, cols = min(oc, MOST_KERNELS), min(ic, MOST_KERNELS)
        tiles = k.tiles.reshape(oc, ic, kh, kw)[:rows, :cols].reshape(rows * cols, kh, kw)
        img, grid = mosaic(tiles, (rows, cols)), (rows, cols)
        what = (f"rows: {rows} of {oc} kernels, columns: {cols} of {ic} input channels" if (rows, cols) != (oc, ic)
                else f"{oc} kernels (rows) x {ic} input channels (columns)")
    else:
        img, grid = mosaic(k.tiles, k.grid), k.grid
        what = f"{oc} kernels, {'RGB' if k.kind == 'rgb' else 'grey'}"
    scale = max(0.25, min(0.6, 9 / max(grid)))
    fig, ax = _subplots(figsize=(max(4.5, grid[1] * scale + 0.4), max(2.0, grid[0] * scale + 0.9)))
    _show(ax, img, vmin=0, vmax=1)
    ax.set_title(f"{run.name} {k.layer}: {kh}x{kw} kernels\n{what}; each scaled to its own range", fontsize=8)
    fig.tight_layout()
    return _save(fig, out, "filters.png")


def features_png(source: str, image: str, layers: list[str] | None = None, out=None) -> Path:
    run = open_model(source)
    x = load_image(image, run.info.view)
    if not layers:
        layers = feature_layers(_twin(run.info), tuple(x.shape[1:]))
    maps = feature_maps(run.model, x, layers)
    panels = [(f"input {Path(image).name}", display(x, run.info.view), {})]
    for name, a in maps.items():
        if a.ndim == 3:
            shown = a[:MOST_MAPS]
            cols = int(np.ceil(np.sqrt(len(shown))))
            lo, hi = float(shown.min()), float(shown.max())
            img = mosaic((shown - lo) / (hi - lo if hi > lo else 1), (-(-len(shown) // cols), cols), fill=np.nan)
            more = f", first {len(shown)}" if len(shown) < len(a) else ""
            title = f"{name}: {a.shape[0]}x{a.shape[1]}x{a.shape[2]}{more} (one scale, {lo:.2g} to {hi:.2g})"
        else:
            img = a.reshape(1, -1)
            title = f"{name}: {a.size} units"
        panels.append((title, img, {"cmap": "viridis", "aspect": "auto" if a.ndim != 3 else "equal"}))
    fig, axes = _subplots(len(panels), 1, figsize=(6, 3.2 * len(panels)), squeeze=False)
    for ax, (title, img, kw) in zip(axes[:, 0], panels):
        _show(ax, img, title, **kw)
    fig.suptitle(f"{run.name}: feature maps", fontsize=10)
    fig.tight_layout()
    return _save(fig, out, "features.png")


def top9_png(source: str, layer: str, data: str | None = None, channels: list[int] | None = None, split: str = "test",
             data_dir=None, out=None, k: int = 9, batch_size: int = 256) -> Path:
    run = open_model(source)
    data = data or (None if run.info.untrained else run.info.data)
    if not data:
        raise CnnlabError("say which images to search with `data` (e.g. mnist, cifar10 or folder:PATH)",
                          params=("data",))
    view = run.info.view.with_data(data)
    # an image folder: its evaluation images (the run's hold-out); in-memory data: ``split``
    images = open_data(view, "val" if view.is_folder else split, batch_size=batch_size, data_dir=data_dir, workers=0)
    if images.channels != view.channels:
        raise CnnlabError(f"{data} has {images.channels}-channel images but the model reads {view.channels}")
    res = top_images(run.model, (x for x, _ in images.loader), layer, channels, k)
    patches = res.patches(images.image)
    n, what = len(images), f"{data} {images.split}"
    per = int(np.ceil(np.sqrt(k)))
    cols = int(np.ceil(np.sqrt(len(res.channels))))
    rows = -(-len(res.channels) // cols)
    fig, axes = _subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, c, tiles in zip(axes.flat, res.channels, patches):
        _show(ax, mosaic(tiles, (-(-len(tiles) // per), per), gap=max(1, tiles.shape[1] // 16)), f"channel {c}",
              vmin=0, vmax=1)
    rf = f"receptive field {res.field.size_text} px" if res.field is not None and res.field.spatial else "whole image"
    fig.suptitle(f"{run.name} {layer}: top {k} of {n:,} {what} images per channel\npatches: the unit's {rf}",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, out, "top9.png")


def _attribution_png(kind: str, source: str, image: str, layer: str | None, target, out) -> Path:
    run = open_model(source)
    x = load_image(image, run.info.view)
    classes = list(run.info.classes)
    t = class_index(target, classes)
    if kind == "saliency":
        att = saliency(run.model, x, t)
    else:
        if layer is None:
            layer = gradcam_layer(_twin(run.info), tuple(x.shape[1:]))
        att = gradcam(run.model, x, layer, t)
    img = display(x, run.info.view)
    fig, axes = _subplots(1, 2, figsize=(7, 3.8))
    _show(axes[0], img, f"{Path(image).name}: predicted {classes[att.predicted]}")
    if kind == "saliency":
        _show(axes[1], att.map, "|d score / d pixel|, max over channels", cmap="hot")
    else:
        _show(axes[1], img, f"Grad-CAM at {att.layer}")
        axes[1].imshow(att.map, cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
    fig.suptitle(f"{run.name}: class {classes[att.target]} (p = {att.probability:.3f})", fontsize=10)
    fig.tight_layout()
    return _save(fig, out, f"{kind}.png")


def saliency_png(source: str, image: str, target=None, out=None) -> Path:
    return _attribution_png("saliency", source, image, None, target, out)


def gradcam_png(source: str, image: str, layer: str | None = None, target=None, out=None) -> Path:
    return _attribution_png("gradcam", source, image, layer, target, out)
