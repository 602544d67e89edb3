"""Reading one image file, the same way for every command: the files of an image folder (``folder:PATH``) and
the images given to ``cnnlab predict`` and ``cnnlab visualize``.

Pillow decodes every format a user is likely to have (JPEG, PNG, WebP, GIF, BMP, TIFF, PPM/PGM/PBM) in every
colour mode, and each mode becomes 8-bit RGB or grayscale here: palettes (and their transparency), alpha
(composited over white, as a viewer shows it), CMYK, 16-bit grayscale (scaled, not clipped) and 1-bit images.
Animated GIFs and multi-page TIFFs give their first frame. A file that is not an image, or is truncated or
corrupt, is one sentence that names it (:class:`~cnnlab.errors.CnnlabError`), never the decoder's traceback."""

from __future__ import annotations

import os
from pathlib import Path

from cnnlab.errors import CnnlabError

# The file names an image folder takes its images from (torchvision's ImageFolder's list, and GIF); a file given
# by name (predict, visualize) is read whatever its name, if its content is one of FORMATS.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")
FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WebP", "GIF": "GIF", "BMP": "BMP", "DIB": "BMP",
           "TIFF": "TIFF", "PPM": "PPM"}
ACCEPTED = "JPEG, PNG, WebP, GIF, BMP, TIFF or PPM/PGM"
FIX = "remove it or replace it with a good copy"


def is_image_name(path: str | os.PathLike) -> bool:
    """Whether an image folder takes this file (by its extension)."""
    return str(path).lower().endswith(EXTENSIONS)


def _missing(path: Path) -> CnnlabError:
    if path.is_symlink():
        return CnnlabError(f"{path} is a symbolic link to {os.readlink(path)}, which does not exist; {FIX}")
    if path.is_dir():
        return CnnlabError(f"{path} is a folder, not an image file; give the image files in it (e.g. {path}/*.jpg)")
    if path.exists():  # a pipe, a device, a socket: reading it could wait for ever
        return CnnlabError(f"{path} is not a regular file; give an image file")
    return CnnlabError(f"image {path} does not exist")


def read_image(path: str | os.PathLike, mode: str = "RGB"):
    """The image file ``path`` as a Pillow image of ``mode`` ("RGB" or "L"), 8 bits per channel."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on palettes and EXIF: the conversion below is ours
            with Image.open(path) as img:
                if img.format not in FORMATS:
                    raise CnnlabError(f"{path} is a {img.format} image; cnnlab reads {ACCEPTED} files: convert it")
                img.seek(0)  # an animated GIF or a multi-page TIFF: the first frame
                img.load()
                return to_8bit(img, path).convert(mode)
    except CnnlabError:
        raise
    except UnidentifiedImageError:
        raise CnnlabError(f"{path} is not an image cnnlab can read (it reads {ACCEPTED}); {FIX}") from None
    except PermissionError:
        raise CnnlabError(f"{path} cannot be read: permission denied; check its permissions") from None
    except Image.DecompressionBombError:
        raise CnnlabError(f"{path} is too large to be an image a CNN reads (over 179M pixels); "
                          f"resize it first") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError) as e:
        why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise CnnlabError(f"{path} is truncated or corrupt ({why}); {FIX}") from None


def to_8bit(img, path: Path):
    """``img`` as an RGB or L image, whatever its mode."""
    import numpy as np
    from PIL import Image

    if img.mode in ("RGB", "L"):
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "PA":
        img = img.convert("RGBA")
    elif img.mode == "1":
        return img.convert("L")
    elif img.mode.startswith("I"):  # 16-bit grayscale (I;16, I;16B, or I): scale 0..65535 to 0..255
        values = np.asarray(img, dtype=np.int64)
        return Image.fromarray((values.clip(0, 65535) >> 8).astype(np.uint8), "L")
    elif img.mode == "F":
        raise CnnlabError(f"{path} holds floating-point pixels (mode F); save it with 8 or 16 bits per channel")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):  # transparent pixels show white, as a viewer shows them
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return img.convert("RGB")  # CMYK, YCbCr, RGBX, ...
    except ValueError:  # LAB, HSV, ...: Pillow has no conversion
        raise CnnlabError(f"{path} is a {img.mode} image, which cnnlab cannot convert to RGB; save it as RGB, "
                          f"e.g. as a PNG") from None
