"""MNIST from the official IDX files, with gzip and NumPy only (``cnnlab.data`` reads the same files into torch).

The four files ship inside the package (``cnnlab/data/embedded/mnist``), so the scratch network trains on real
data without a download; ``data_dir`` points at another folder holding the same four file names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnlab.data.idx import EMBEDDED, read_idx
from cnnlab.errors import CnnlabError

FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def load_mnist(split: str, data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 28 x 28 uint8, labels N int64) of 'train' (60,000) or 'test' (10,000)."""
    if split not in FILES:
        raise CnnlabError(f"split must be 'train' or 'test', not {split!r}")
    folder = Path(data_dir) if data_dir is not None else EMBEDDED / "mnist"
    if folder.exists() and not folder.is_dir():
        raise CnnlabError(f"`data_dir` {folder} is a file, not a folder; point it at a folder with the four "
                          "official MNIST .gz files", params=("data_dir",))
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
