"""LeCun's IDX format (MNIST and its kin), with gzip and NumPy only, so that the NumPy reference
(:mod:`cnnlab.scratch`) reads the same files without importing PyTorch; and the MNIST files that ship inside
the package."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from cnnlab.errors import CnnlabError

EMBEDDED = Path(__file__).resolve().parent / "embedded"  # <family>/<official file names>, e.g. mnist/


def read_idx(path: str | Path) -> np.ndarray:
    """An unsigned-byte IDX file (gzipped or not) as a uint8 array: magic 0 0 8 ndim, ndim big-endian sizes, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise CnnlabError(f"{path} is corrupt or truncated ({e}); download it again or copy a good one there "
                          f"(`cnnlab data verify` checks cnnlab's data files)") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise CnnlabError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise CnnlabError(f"{path} holds {len(data) - offset} values but its header says {dims}; it is truncated")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)
