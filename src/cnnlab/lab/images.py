"""Uploaded images: decoded from memory by Pillow and nothing else, kept in memory under an id the server makes.

An upload is the raw file as the request's body (the app refuses bodies over 10 MB with a 413). It is decoded
only as one of five image formats (Pillow is told which decoders it may try, so no other parser ever sees the
bytes and nothing is unpickled); its header's size is checked before any pixel is decoded (a PNG of 100 bytes
may declare 100,000 x 100,000 pixels: a decompression bomb), and Pillow's own DecompressionBombWarning is a
refusal too. Every colour mode becomes 8-bit RGB or grey the way ``cnnlab predict`` reads files
(:func:`cnnlab.data.images.to_8bit`: alpha over white, palettes, 16-bit grey), and the image is then
prepared for a network by :func:`cnnlab.data.view.prepare_image`, as ``cnnlab predict`` prepares a file. What
was converted on the way (alpha, colour to grey, grey to colour, the resize) is said in a note for the page.

The last :data:`KEEP` uploads are kept (least recently used first out); the page names them by id only.
"""

from __future__ import annotations

import io
import re
import threading
import uuid
import warnings
from collections import OrderedDict
from dataclasses import dataclass

from cnnlab.errors import CnnlabError
from cnnlab.lab.web import LabError

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
MAX_PIXELS = 40_000_000  # 40 MP: more than any camera image a CNN is shown, far less than a bomb's
KEEP = 32


@dataclass
class Upload:
    """One decoded upload: ``image`` is a Pillow image in mode RGB or L."""

    id: str
    name: str  # the file name the page gave, for display and the commands only (never opened)
    image: object
    mode: str  # the file's own colour mode (RGBA, P, L, I;16, ...)
    format: str
    alpha: bool  # it had transparency (composited over white)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def safe_name(name: str | None) -> str:
    """A file name to show: its last path part, plain characters only (it is never used as a path)."""
    name = re.sub(r"[^A-Za-z0-9._ -]", "_", (name or "").replace("\\", "/").rsplit("/", 1)[-1]).strip(" .")
    return name[:80] or "upload.png"


def decode(raw: bytes, name: str | None = None):
    """``raw`` as an :class:`Upload` (its id not yet given); a :class:`LabError` (400) with one sentence for
    anything that is not a whole image of the accepted formats and sizes."""
    from PIL import Image, UnidentifiedImageError

    from cnnlab.data.images import to_8bit

    shown = safe_name(name)
    if not raw:
        raise LabError("the upload is empty; choose an image file (PNG, JPEG, GIF, BMP or WebP)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on palettes and EXIF
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a bomb is refused, not warned about
            with Image.open(io.BytesIO(raw), formats=FORMATS) as img:
                w, h = img.size  # from the header: nothing decoded yet
                if w * h > MAX_PIXELS:
                    raise _too_large(shown, w, h)
                img.seek(0)  # an animated GIF: its first frame
                img.load()
                mode, fmt = img.mode, img.format
                alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
                image = to_8bit(img, shown)
    except CnnlabError:  # the lab's refusals and the library's (a mode it cannot convert): their own sentence
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:  # found by Pillow at open
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise LabError(f"{shown} declares {int(pixels[1]) / 1e6 if pixels else 89:,.0f} megapixels"
                       f"{'' if pixels else ' or more'}; the lab takes images up to {MAX_PIXELS // 1_000_000} "
                       f"megapixels: resize it first") from None
    except UnidentifiedImageError:
        raise LabError(f"{shown} is not an image the lab reads; upload a PNG, JPEG, GIF, BMP or WebP file") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure (truncated, corrupt) is the file's, said in one line
        why = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise LabError(f"{shown} is truncated or corrupt ({why}); upload a whole image file") from None
    return Upload("", shown, image, mode, fmt, alpha)


def _too_large(name: str, w: int, h: int) -> LabError:
    return LabError(f"{name} declares {w:,} x {h:,} pixels; the lab takes images up to {MAX_PIXELS // 1_000_000} "
                    f"megapixels: resize it first")


def note(upload: Upload, view) -> str:
    """What preparing this upload for a network of ``view`` changed, in one sentence ('' when nothing did)."""
    parts = []
    if upload.alpha:
        parts.append("its transparent pixels were composited over white")
    colour = upload.image.mode == "RGB"
    if colour and view.channels == 1:
        parts.append("the colour image was converted to grey for this 1-channel network")
    elif not colour and view.channels == 3:
        parts.append("the grey image was repeated into 3 channels for this colour network")
    w, h = upload.size
    if view.is_folder:
        if (w, h) != (view.size, view.size):
            parts.append(f"it was resized and centre-cropped from {w}x{h} to {view.size}x{view.size}")
    else:
        from cnnlab.data.sources import spec

        s = spec(view.data).size
        if (w, h) != (s, s):  # the run's own images are s x s (then padded as they were): nothing to say
            pad = f" (then padded to {view.pad_to}x{view.pad_to} as the run's images are)" if view.pad_to > s else ""
            parts.append(f"it was resized from {w}x{h} to {s}x{s}{', not keeping its proportions' * (w != h)}{pad}")
    text = "; ".join(parts) + "."
    return text[0].upper() + text[1:] if parts else ""


def prepare(upload: Upload, view):
    """The upload as the network reads it: 1 x C x H x W, prepared as ``cnnlab predict`` prepares a file."""
    from cnnlab.data.view import prepare_image

    return prepare_image(upload.image.convert("L" if view.channels == 1 else "RGB"), view)


class Uploads:
    """The last :data:`KEEP` uploads of one server, by id (least recently used out first)."""

    def __init__(self, keep: int = KEEP):
        self.keep = keep
        self._items: OrderedDict[str, Upload] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, upload: Upload) -> Upload:
        upload.id = "u-" + uuid.uuid4().hex[:16]
        with self._lock:
            self._items[upload.id] = upload
            while len(self._items) > self.keep:
                self._items.popitem(last=False)
        return upload

    def get(self, upload_id: str) -> Upload:
        with self._lock:
            upload = self._items.get(upload_id)
            if upload is not None:
                self._items.move_to_end(upload_id)
        if upload is None:
            raise LabError("that upload is no longer on the server (it keeps the last "
                           f"{self.keep}, and forgets them when it restarts); upload the image again", 404)
        return upload

    def __len__(self) -> int:
        return len(self._items)
