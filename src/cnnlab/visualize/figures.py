"""The pictures of ``cnnlab visualize``: from a run folder, a checkpoint or a model name to a PNG file.

Runs are opened with :func:`cnnlab.runs.open_model` (a run, or a registered model's initial weights); images
are read and preprocessed exactly as ``cnnlab predict`` reads them (:func:`cnnlab.data.view.load_image`); the
pictures are drawn by :mod:`cnnlab.visualize.plots` (the Figures a notebook gets) and written atomically.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cnnlab.data.view import display, load_image, open_data
from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_savefig
from cnnlab.runs import RunInfo, open_model
from cnnlab.visualize.attribution import gradcam, saliency
from cnnlab.visualize.features import feature_maps
from cnnlab.visualize.filters import filters
from cnnlab.visualize.layers import feature_layers, gradcam_layer
from cnnlab.visualize.plots import plot_feature_maps, plot_filters, plot_gradcam, plot_saliency, plot_top_images
from cnnlab.visualize.top9 import top_images


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


def _save(fig, out, default: str) -> Path:
    path = Path(out or default)
    if path.suffix.lower() != ".png":
        raise CnnlabError(f"`out` must be a .png file, got {path}", params=("out",))
    atomic_savefig(fig, path, dpi=100)
    return path


def filters_png(source: str, layer: str | None = None, out=None) -> Path:
    run = open_model(source)
    return _save(plot_filters(filters(run.model, layer), run.name), out, "filters.png")


def features_png(source: str, image: str, layers: list[str] | None = None, out=None) -> Path:
    run = open_model(source)
    x = load_image(image, run.info.view)
    if not layers:
        layers = feature_layers(_twin(run.info), tuple(x.shape[1:]))
    maps = feature_maps(run.model, x, layers)
    fig = plot_feature_maps(display(x, run.info.view), maps, run.name, Path(image).name)
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
    fig = plot_top_images(res, res.patches(images.image), run.name, f"{data} {images.split}", len(images))
    return _save(fig, out, "top9.png")


def _attribution_png(kind: str, source: str, image: str, layer: str | None, target, out) -> Path:
    run = open_model(source)
    x = load_image(image, run.info.view)[0]  # C x H x W: one image's Attribution
    classes = list(run.info.classes)
    t = class_index(target, classes)
    if kind == "saliency":
        att, plot = saliency(run.model, x, t), plot_saliency
    else:
        if layer is None:
            layer = gradcam_layer(_twin(run.info), tuple(x.shape))
        att, plot = gradcam(run.model, x, layer, t), plot_gradcam
    fig = plot(display(x, run.info.view), att, classes, run.name, Path(image).name)
    return _save(fig, out, f"{kind}.png")


def saliency_png(source: str, image: str, target=None, out=None) -> Path:
    return _attribution_png("saliency", source, image, None, target, out)


def gradcam_png(source: str, image: str, layer: str | None = None, target=None, out=None) -> Path:
    return _attribution_png("gradcam", source, image, layer, target, out)
