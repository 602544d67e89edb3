"""The pictures of :mod:`cnnlab.visualize` as matplotlib Figures, for notebooks and scripts.

Each ``plot_*`` function draws what a ``cnnlab.visualize`` function returned and gives back the Figure: Jupyter
shows it inline, ``fig.savefig("x.png")`` saves it. They read no files and choose no matplotlib backend (the
figures are made without pyplot, :func:`cnnlab.fileio.figure`), and ``cnnlab visualize`` draws its PNGs with
them (:mod:`cnnlab.visualize.figures`). ``image`` arguments are the picture as a person sees it: H x W x C or
H x W arrays (or C x H x W tensors) with values in 0..1; an image outside 0..1 (a normalised input) is shown
scaled to its own range.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from cnnlab.errors import CnnlabError
from cnnlab.fileio import figure
from cnnlab.visualize.filters import mosaic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cnnlab.visualize.attribution import Attribution
    from cnnlab.visualize.filters import Kernels
    from cnnlab.visualize.top9 import TopImages

MOST_KERNELS = 32  # rows (kernels) and columns (input channels) drawn for a deep layer's kernels
MOST_MAPS = 64  # feature maps drawn per layer


def _show(ax, img: np.ndarray, title: str = "", **kw) -> None:
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        kw.setdefault("cmap", "gray")
    kw.setdefault("interpolation", "nearest")
    ax.imshow(img, **kw)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _picture(image) -> np.ndarray:
    """An image to draw: H x W x C (or H x W) in 0..1, from an array or a C x H x W tensor."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu()
        if image.dim() == 3:
            image = image.permute(1, 2, 0)
        image = image.numpy()
    img = np.asarray(image)
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3)):
        raise CnnlabError(f"expected an image H x W x C (C = 1 or 3), H x W or a C x H x W tensor, got shape "
                          f"{img.shape}")
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255
    img = img.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    if lo < 0 or hi > 1:  # a normalised input: shown by its own range
        img = (img - lo) / (hi - lo if hi > lo else 1)
    return img


def plot_filters(kernels: Kernels, name: str | None = None) -> Figure:
    """The kernels of :func:`~cnnlab.visualize.filters` as one mosaic: a tile per kernel (RGB or grey), or a row
    per kernel and a column per input channel for a deeper layer (at most 32 of each)."""
    k = kernels
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
    fig = figure(figsize=(max(4.5, grid[1] * scale + 0.4), max(2.0, grid[0] * scale + 0.9)))
    ax = fig.subplots()
    _show(ax, img, vmin=0, vmax=1)
    ax.set_title(f"{_prefix(name)}{k.layer}: {kh}x{kw} kernels\n{what}; each scaled to its own range", fontsize=8)
    fig.tight_layout()
    return fig


def plot_feature_maps(image, maps: dict[str, np.ndarray], name: str | None = None,
                      image_name: str | None = None) -> Figure:
    """The image (if given) and, one panel per layer, the maps of :func:`~cnnlab.visualize.feature_maps` (at
    most 64 per layer, all of a layer on one scale) or a fully connected layer's units as a strip."""
    panels = [] if image is None else [(f"input {image_name}" if image_name else "input", _picture(image), {})]
    for layer, a in maps.items():
        if a.ndim == 3:
            shown = a[:MOST_MAPS]
            cols = int(np.ceil(np.sqrt(len(shown))))
            lo, hi = float(shown.min()), float(shown.max())
            img = mosaic((shown - lo) / (hi - lo if hi > lo else 1), (-(-len(shown) // cols), cols), fill=np.nan)
            more = f", first {len(shown)}" if len(shown) < len(a) else ""
            title = f"{layer}: {a.shape[0]}x{a.shape[1]}x{a.shape[2]}{more} (one scale, {lo:.2g} to {hi:.2g})"
        else:
            img = a.reshape(1, -1)
            title = f"{layer}: {a.size} units"
        panels.append((title, img, {"cmap": "viridis", "aspect": "auto" if a.ndim != 3 else "equal"}))
    if not panels:
        raise CnnlabError("nothing to draw: give an image or at least one layer's maps")
    fig = figure(figsize=(6, 3.2 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)
    for ax, (title, img, kw) in zip(axes[:, 0], panels):
        _show(ax, img, title, **kw)
    fig.suptitle(f"{_prefix(name, ': ')}feature maps", fontsize=10)
    fig.tight_layout()
    return fig


def plot_top_images(result: TopImages, patches: np.ndarray, name: str | None = None, data: str | None = None,
                    images: int | None = None) -> Figure:
    """One mosaic per channel of :func:`~cnnlab.visualize.top_images`' patches (``result.patches(image)``,
    channels x k x h x w x C); ``data`` and ``images`` (how many were searched) go into the title."""
    k = patches.shape[1]
    per = int(np.ceil(np.sqrt(k)))
    cols = int(np.ceil(np.sqrt(len(result.channels))))
    rows = -(-len(result.channels) // cols)
    fig = figure(figsize=(2.2 * cols, 2.4 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, c, tiles in zip(axes.flat, result.channels, patches):
        _show(ax, mosaic(tiles, (-(-len(tiles) // per), per), gap=max(1, tiles.shape[1] // 16)), f"channel {c}",
              vmin=0, vmax=1)
    field = result.field
    rf = f"receptive field {field.size_text} px" if field is not None and field.spatial else "whole image"
    of = f" of {images:,}" if images is not None else ""
    fig.suptitle(f"{_prefix(name)}{result.layer}: top {k}{of}{' ' + data if data else ''} images per channel\n"
                 f"patches: the unit's {rf}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_saliency(image, attribution: Attribution, classes: Sequence[str] | None = None, name: str | None = None,
                  image_name: str | None = None) -> Figure:
    """The image (if given) beside its saliency map, one row per image of a batch."""
    if attribution.layer is not None:
        raise CnnlabError("this Attribution is a Grad-CAM map (it has a layer); draw it with plot_gradcam")
    return _attribution_figure(image, attribution, classes, name, image_name)


def plot_gradcam(image, attribution: Attribution, classes: Sequence[str] | None = None, name: str | None = None,
                 image_name: str | None = None) -> Figure:
    """The image (if given) beside the Grad-CAM map laid over it, one row per image of a batch."""
    if attribution.layer is None:
        raise CnnlabError("this Attribution is a saliency map (it has no layer); draw it with plot_saliency")
    return _attribution_figure(image, attribution, classes, name, image_name)


def _attribution_figure(image, att: Attribution, classes, name, image_name) -> Figure:
    def label(c: int) -> str:
        return str(classes[c]) if classes is not None else f"{c}"

    images = [None] * len(att) if image is None else _pictures(image, len(att))
    gradcam = att.layer is not None
    cols = 1 if image is None else 2
    fig = figure(figsize=(3.8 * cols - 0.6 * (cols - 1), 3.8 * len(att) if att.batched else 3.8))
    axes = fig.subplots(len(att), cols, squeeze=False)
    scale = {None: "raw", "max": "/ max", "minmax": "min-max"}[att.normalize]
    for row, (a, img) in enumerate(zip(att, images)):
        ax = axes[row]
        if img is not None:
            _show(ax[0], img, f"{image_name + ': ' if image_name else ''}predicted {label(a.predicted)}")
        if gradcam:
            what = f"Grad-CAM at {a.layer}"
            if img is None:
                _show(ax[-1], a.map, what, cmap="jet", vmin=0, vmax=1, interpolation="bilinear")
            else:
                _show(ax[-1], img, what)
                ax[-1].imshow(a.map, cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
        else:
            _show(ax[-1], a.map, "|d score / d pixel|, max over channels" + (f" ({scale})" if a.normalize else ""),
                  cmap="hot")
        if att.batched:
            ax[0].set_title(f"{ax[0].get_title()}\nclass {label(a.target)} (p = {a.probability:.3f})", fontsize=9)
    if not att.batched:
        fig.suptitle(f"{_prefix(name, ': ')}class {label(att.target)} (p = {att.probability:.3f})", fontsize=10)
    elif name:
        fig.suptitle(name, fontsize=10)
    fig.tight_layout()
    return fig


def _pictures(image, n: int) -> list[np.ndarray]:
    """``n`` images to draw from one image, or from a batch (N x C x H x W tensor, N x H x W x C array, a list)."""
    ndim = image.dim() if isinstance(image, torch.Tensor) else np.ndim(image)
    batch = isinstance(image, (list, tuple)) or ndim == 4
    if not batch:
        if n != 1:
            raise CnnlabError(f"the attribution is of {n} images but one image was given to draw it on")
        return [_picture(image)]
    if len(image) != n:
        raise CnnlabError(f"the attribution is of {n} images but {len(image)} were given to draw it on")
    return [_picture(i) for i in image]


def _prefix(name: str | None, sep: str = " ") -> str:
    return f"{name}{sep}" if name else ""
