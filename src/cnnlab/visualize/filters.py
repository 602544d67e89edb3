"""Convolution kernels as pictures (Krizhevsky et al. 2012, Fig. 3: AlexNet's 96 first-layer kernels).

A first layer that reads a colour image is drawn as one RGB tile per kernel, a grey image as one grey tile per
kernel. A deeper layer's kernel has one slice per input channel, none of them a colour: it is drawn as a row
of grey tiles, one per input channel. Each kernel is scaled to 0..1 on its own (its minimum black, its maximum
white), over all its slices, so a row shows which input channels the kernel weighs most.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.visualize.hooks import find_layer


@dataclass
class Kernels:
    layer: str
    kind: str  # "rgb", "grey" or "slices"
    tiles: np.ndarray  # n x h x w (grey) or n x h x w x 3 (rgb), values in 0..1
    grid: tuple[int, int]  # (rows, columns) to lay them out: slices are (kernels, input channels)
    weight_shape: tuple[int, ...]  # out x in/groups x kh x kw

    def __len__(self) -> int:
        return len(self.tiles)

    def _repr_png_(self) -> bytes:  # a notebook shows the mosaic
        from cnnlab.fileio import png_bytes
        from cnnlab.visualize.plots import plot_filters

        return png_bytes(plot_filters(self))


def conv_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _square_grid(n: int) -> tuple[int, int]:
    cols = int(np.ceil(np.sqrt(n)))
    return -(-n // cols), cols


def filters(model: nn.Module, layer: str | None = None) -> Kernels:
    """The kernels of ``layer`` (default: the first convolution), each scaled to 0..1."""
    convs = conv_layers(model)
    if not convs:
        raise CnnlabError(f"{type(model).__name__} has no convolution layer to draw")
    name = layer or convs[0]
    module = find_layer(model, name)
    if not isinstance(module, nn.Conv2d):
        shown = ", ".join(convs[:12]) + (f", ... ({len(convs)} in all)" if len(convs) > 12 else "")
        raise CnnlabError(f"layer {name!r} is a {type(module).__name__}, not a convolution; its kernels cannot be "
                          f"drawn. Convolutions: {shown}")
    w = module.weight.detach().float().cpu()  # out x in/groups x kh x kw
    lo = w.amin((1, 2, 3), keepdim=True)
    span = w.amax((1, 2, 3), keepdim=True) - lo
    w = ((w - lo) / span.clamp(min=1e-12)).where(span > 0, 0.5).numpy()  # a constant kernel is mid-grey
    out, cin = w.shape[:2]
    reads_image = name == convs[0]
    if reads_image and cin == 3:
        return Kernels(name, "rgb", w.transpose(0, 2, 3, 1).copy(), _square_grid(out), tuple(module.weight.shape))
    if cin == 1:
        return Kernels(name, "grey", w[:, 0].copy(), _square_grid(out), tuple(module.weight.shape))
    return Kernels(name, "slices", w.reshape(out * cin, *w.shape[2:]), (out, cin), tuple(module.weight.shape))


def mosaic(tiles: np.ndarray, grid: tuple[int, int], gap: int = 1, fill: float = 1.0) -> np.ndarray:
    """Lay ``tiles`` (n x h x w [x 3]) out row by row on a ``grid`` with ``gap`` pixels of ``fill`` between."""
    n, h, w = tiles.shape[:3]
    rows, cols = grid
    if n > rows * cols:
        raise ValueError(f"{n} tiles do not fit a {rows}x{cols} grid")
    canvas = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, *tiles.shape[3:]), fill, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = tiles[i]
    return canvas
