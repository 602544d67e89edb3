"""Arrays as small PNGs for the pages, fast: Pillow encodes, matplotlib only lends its colour maps (no figure
is drawn, so a view of 256 feature maps costs milliseconds, not seconds). Pictures travel inside the JSON as
``data:image/png;base64,...`` URLs; the page puts them in ``<img>`` as they are.
"""

from __future__ import annotations

import base64
import io

import numpy as np


def _lut(cmap: str) -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


_LUTS: dict[str, np.ndarray] = {}


def lut(cmap: str) -> np.ndarray:
    """256 x 3 uint8 colours of a matplotlib colour map."""
    if cmap not in _LUTS:
        _LUTS[cmap] = _lut(cmap)
    return _LUTS[cmap]


def to_uint8(a: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Values scaled linearly from [lo, hi] (default: the array's own range) to 0..255."""
    a = np.asarray(a, dtype=np.float32)
    lo = float(np.min(a)) if lo is None else lo
    hi = float(np.max(a)) if hi is None else hi
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip((a - lo) * scale, 0, 255).astype(np.uint8)


def png(img: np.ndarray, scale: int = 1) -> bytes:
    """H x W (grey) or H x W x 3 uint8 as PNG bytes, each pixel ``scale`` times as large (nearest)."""
    from PIL import Image

    img = np.ascontiguousarray(img)
    if scale > 1:
        img = img.repeat(scale, 0).repeat(scale, 1)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def data_url(png_bytes: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes).decode("ascii")


def image_url(img: np.ndarray, scale: int = 1) -> str:
    """An image with values in 0..1 (H x W, H x W x 1 or H x W x 3) as a data URL."""
    img = np.asarray(img, dtype=np.float32)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    return data_url(png(to_uint8(img, 0.0, 1.0), scale))


def heat_url(a: np.ndarray, lo: float | None = None, hi: float | None = None, cmap: str = "viridis",
             scale: int = 1) -> str:
    """A 2-D array in a colour map, scaled from [lo, hi] (a fixed scale shared by a layer's maps)."""
    return data_url(png(lut(cmap)[to_uint8(a, lo, hi)], scale))


def overlay_url(image: np.ndarray, heat: np.ndarray, cmap: str = "jet", alpha: float = 0.5) -> str:
    """A heat map in 0..1 (any size: resized to the image's) blended over an image in 0..1."""
    from PIL import Image

    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    h, w = image.shape[:2]
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != (h, w):
        heat = np.asarray(Image.fromarray(heat).resize((w, h), Image.BILINEAR))
    colours = lut(cmap)[to_uint8(heat, 0.0, 1.0)].astype(np.float32) / 255
    return image_url((1 - alpha) * image + alpha * colours)
