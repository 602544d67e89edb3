"""MNIST from the official IDX files, with gzip and NumPy only (``cnnlab.data`` reads the same files into torch).

The four files ship inside the package (``cnnlab/data/embedded/mnist``), so the scratch network trains on real
data without a download; ``data_dir`` points at another folder holding the same four file names.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from cnnlab.errors import CnnlabError

EMBEDDED = Path(__file__).resolve().parent.parent / "data" / "embedded" / "mnist"
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def read_idx(path: str | Path) -> np.ndarray:
    """An unsigned-byte IDX file (gzipped or not) as a uint8 array: magic 0 0 8 ndim, ndim big-endian sizes, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise CnnlabError(f"{path} cannot be read as an IDX file ({e}); check the path or fetch it again") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise CnnlabError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise CnnlabError(f"{path} holds {len(data) - offset} values but its header says {dims}; it is truncated")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)


def load_mnist(split: str, data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 28 x 28 uint8, labels N int64) of 'train' (60,000) or 'test' (10,000)."""
    if split not in FILES:
        raise CnnlabError(f"split must be 'train' or 'test', not {split!r}")
    folder = Path(data_dir) if data_dir is not None else EMBEDDED
    paths = [folder / name for name in FILES[split]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise CnnlabError(f"{folder} has no {', '.join(missing)}; point --data-dir at a folder with the four "
                          "official MNIST .gz files, or leave it out to use the copy inside cnnlab")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise CnnlabError(f"{folder}: expected N x 28 x 28 images and N labels, found {images.shape} and "
                          f"{labels.shape}")
    return images, labels.astype(np.int64)
