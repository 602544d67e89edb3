"""Parsers for the official file formats. No general unpickling: CIFAR's pickles are read with an
unpickler that accepts only the handful of types those files contain, after their MD5 is checked."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from cnnlab.data import idx
from cnnlab.errors import CnnlabError


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (LeCun's MNIST format, gzipped or not) as a uint8 tensor."""
    return torch.from_numpy(idx.read_idx(path).copy())


class _CifarUnpickler(pickle.Unpickler):
    """Only what the official CIFAR batches contain: dicts, lists, bytes, str, ints and numpy arrays."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes the bytes inside a protocol-2 array pickle
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")


def read_cifar_batch(path: Path, label_key: bytes = b"labels") -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR python batch: images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = d[label_key]
    except (pickle.UnpicklingError, KeyError, EOFError, TypeError, ValueError) as e:
        raise CnnlabError(f"{path} is not a CIFAR python batch ({e})") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != data.shape[0]:
        raise CnnlabError(f"{path}: expected N x 3072 pixels and N labels, found {data.shape} and {len(labels)}")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.tensor(list(labels), dtype=torch.long)


def read_cifar_meta(path: Path, key: bytes) -> list[str]:
    with open(path, "rb") as f:
        d = _CifarUnpickler(f, encoding="bytes").load()
    return [n.decode() if isinstance(n, bytes) else str(n) for n in d[key]]


def read_jpeg_tar(path: Path, split: str, classes: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The CIFAR-10 JPEG copy: ``split/<class>/NNNN.jpg`` members of a tar.gz, decoded in name order."""
    from torchvision.io import decode_jpeg

    index = {c: i for i, c in enumerate(classes)}
    items = []
    with tarfile.open(path, "r:gz") as tar:
        for m in tar:
            parts = m.name.strip("./").split("/")
            if m.isfile() and len(parts) == 3 and parts[0] == split and parts[1] in index:
                items.append((parts[1], parts[2], tar.extractfile(m).read()))
    if not items:
        raise CnnlabError(f"{path} has no {split}/<class>/*.jpg images")
    items.sort(key=lambda t: (index[t[0]], t[1]))
    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for _, _, b in items]
    images = torch.stack(decode_jpeg(data))
    labels = torch.tensor([index[c] for c, _, _ in items])
    return images, labels
