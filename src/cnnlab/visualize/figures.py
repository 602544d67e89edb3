"""The pictures of ``cnnlab visualize``: from a run folder, a checkpoint or a model name to a PNG file.

Images are read and preprocessed exactly as ``cnnlab predict`` reads them
(:func:`cnnlab.train.evaluate.load_image`); PNGs are written atomically with matplotlib's Agg backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_savefig
from cnnlab.visualize.attribution import gradcam, saliency
from cnnlab.visualize.features import feature_maps
from cnnlab.visualize.filters import filters, mosaic
from cnnlab.visualize.layers import feature_layers, gradcam_layer
from cnnlab.visualize.top9 import top_images

MOST_KERNELS = 32  # rows (kernels) and columns (input channels) drawn for a deep layer's kernels
MOST_MAPS = 64  # feature maps drawn per layer


def load(source: str) -> tuple[nn.Module, dict]:
    """A run folder or checkpoint (the trained model), or a registered model name: its random initial weights
    (seed 0), to see what a network looks like before training. Images for an untrained model are prepared as
    for an image folder (resize, centre crop, ImageNet normalisation)."""
    from cnnlab.models.registry import create_model, list_models, model_card
    from cnnlab.train.evaluate import model_from_checkpoint

    if not Path(source).expanduser().exists() and source in list_models():
        card = model_card(source)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = create_model(source).eval()
        state = {"model_name": source, "model_options": {}, "num_classes": card.num_classes,
                 "in_chans": card.input_size[0], "input_size": list(card.input_size), "data": "folder:",
                 "classes": [str(i) for i in range(card.num_classes)], "untrained": True}
        return model, state
    return model_from_checkpoint(source)


def _twin(state: dict) -> nn.Module:
    """The checkpoint's architecture on the meta device: traced for default layers at no cost."""
    from cnnlab.models.registry import create_model

    with torch.device("meta"):
        return create_model(state["model_name"], num_classes=state["num_classes"], in_chans=state["in_chans"],
                            **state.get("model_options", {}))


def _stats(state: dict, channels: int) -> tuple[tuple, tuple]:
    data = state["data"]
    if data.startswith("folder:"):
        from cnnlab.data.folder import IMAGENET_MEAN, IMAGENET_STD
        return (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
    from cnnlab.data.sources import spec
    s = spec(data)
    return s.mean, s.std


def display(x: torch.Tensor, state: dict) -> np.ndarray:
    """A preprocessed image (1 x C x H x W) back to H x W x C values in 0..1."""
    x = x.detach().float().cpu().reshape(-1, *x.shape[-2:])
    mean, std = _stats(state, x.shape[0])
    img = x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    return img.clamp(0, 1).permute(1, 2, 0).numpy()


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


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out, default: str) -> Path:
    path = Path(out or default)
    if path.suffix.lower() != ".png":
        raise CnnlabError(f"--out must be a .png file, got {path}")
    try:
        atomic_savefig(fig, path, dpi=100)
    finally:
        _plt().close(fig)
    return path


def _show(ax, img: np.ndarray, title: str = "", **kw) -> None:
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        kw.setdefault("cmap", "gray")
    ax.imshow(img, interpolation="nearest", **kw)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _name(state: dict) -> str:
    return state["model_name"] + (" (untrained)" if state.get("untrained") else "")


def filters_png(source: str, layer: str | None = None, out=None) -> Path:
    model, state = load(source)
    k = filters(model, layer)
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
    plt = _plt()
    scale = max(0.25, min(0.6, 9 / max(grid)))
    fig, ax = plt.subplots(figsize=(max(4.5, grid[1] * scale + 0.4), max(2.0, grid[0] * scale + 0.9)))
    _show(ax, img, vmin=0, vmax=1)
    ax.set_title(f"{_name(state)} {k.layer}: {kh}x{kw} kernels\n{what}; each scaled to its own range", fontsize=8)
    fig.tight_layout()
    return _save(fig, out, "filters.png")


def features_png(source: str, image: str, layers: list[str] | None = None, out=None) -> Path:
    from cnnlab.train.evaluate import load_image

    model, state = load(source)
    x = load_image(image, state)
    if not layers:
        layers = feature_layers(_twin(state), tuple(x.shape[1:]))
    maps = feature_maps(model, x, layers)
    plt = _plt()
    panels = [(f"input {Path(image).name}", display(x, state), {})]
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
    fig, axes = plt.subplots(len(panels), 1, figsize=(6, 3.2 * len(panels)), squeeze=False)
    for ax, (title, img, kw) in zip(axes[:, 0], panels):
        _show(ax, img, title, **kw)
    fig.suptitle(f"{_name(state)}: feature maps", fontsize=10)
    fig.tight_layout()
    return _save(fig, out, "features.png")


def _memory_source(data: str, split: str, data_dir, state: dict, batch_size: int):
    from cnnlab.data.memory import load as load_data
    from cnnlab.data.memory import pad_to, preprocess

    ds = load_data(data, split, data_dir)
    if ds.channels != state["in_chans"]:
        raise CnnlabError(f"{data} has {ds.channels}-channel images but the model reads {state['in_chans']}")
    pad = (state.get("recipe") or {}).get("augment", {}).get("pad_to", 0)
    if "recipe" not in state and ds.images.shape[-1] < state["input_size"][-1]:
        pad = state["input_size"][-1]  # an untrained model: centred on its input size, as LeNet-5 reads MNIST

    def batches():
        for i in range(0, len(ds), batch_size):
            yield preprocess(pad_to(ds.images[i:i + batch_size], pad), ds.mean, ds.std)

    def image(i: int) -> np.ndarray:
        return pad_to(ds.images[i:i + 1], pad)[0].permute(1, 2, 0).float().numpy() / 255

    return batches(), image, len(ds), f"{data} {split}"


def _folder_source(data: str, state: dict, batch_size: int):
    from cnnlab.data.folder import folder_loader, run_folder_datasets

    _, evald, _, split = run_folder_datasets(state, data)
    batches = (x for x, _ in folder_loader(evald, batch_size, False, 0, workers=0))
    return batches, lambda i: display(evald[i][0], state), len(evald), f"{data} {split}"


def top9_png(source: str, layer: str, data: str | None = None, channels: list[int] | None = None, split: str = "test",
             data_dir=None, out=None, k: int = 9, batch_size: int = 256) -> Path:
    model, state = load(source)
    data = data or (None if state.get("untrained") else state["data"])
    if not data:
        raise CnnlabError("say which images to search with --data (e.g. mnist, cifar10 or folder:PATH)")
    if data.startswith("folder:"):
        batches, image, n, what = _folder_source(data, state, batch_size)
    else:
        batches, image, n, what = _memory_source(data, split, data_dir, state, batch_size)
    res = top_images(model, batches, layer, channels, k)
    patches = res.patches(image)
    per = int(np.ceil(np.sqrt(k)))
    plt = _plt()
    cols = int(np.ceil(np.sqrt(len(res.channels))))
    rows = -(-len(res.channels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, c, tiles in zip(axes.flat, res.channels, patches):
        _show(ax, mosaic(tiles, (-(-len(tiles) // per), per), gap=max(1, tiles.shape[1] // 16)), f"channel {c}",
              vmin=0, vmax=1)
    rf = f"receptive field {res.field.size_text} px" if res.field is not None and res.field.spatial else "whole image"
    fig.suptitle(f"{_name(state)} {layer}: top {k} of {n:,} {what} images per channel\npatches: the unit's {rf}",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, out, "top9.png")


def _attribution_png(kind: str, source: str, image: str, layer: str | None, target, out) -> Path:
    from cnnlab.train.evaluate import load_image

    model, state = load(source)
    x = load_image(image, state)
    t = class_index(target, state["classes"])
    if kind == "saliency":
        att = saliency(model, x, t)
    else:
        if layer is None:
            layer = gradcam_layer(_twin(state), tuple(x.shape[1:]))
        att = gradcam(model, x, layer, t)
    classes = state["classes"]
    img = display(x, state)
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.8))
    _show(axes[0], img, f"{Path(image).name}: predicted {classes[att.predicted]}")
    if kind == "saliency":
        _show(axes[1], att.map, "|d score / d pixel|, max over channels", cmap="hot")
    else:
        _show(axes[1], img, f"Grad-CAM at {att.layer}")
        axes[1].imshow(att.map, cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
    fig.suptitle(f"{_name(state)}: class {classes[att.target]} (p = {att.probability:.3f})", fontsize=10)
    fig.tight_layout()
    return _save(fig, out, f"{kind}.png")


def saliency_png(source: str, image: str, target=None, out=None) -> Path:
    return _attribution_png("saliency", source, image, None, target, out)


def gradcam_png(source: str, image: str, layer: str | None = None, target=None, out=None) -> Path:
    return _attribution_png("gradcam", source, image, layer, target, out)
