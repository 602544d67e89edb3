"""How many threads NumPy's matrix products use, set at run time (what threadpoolctl does, in a few lines).

The scratch network's products are small, so OpenBLAS's extra threads spin more than they help, most of all on
a busy machine (figures: docs/benchmarks.md). Training therefore runs on one BLAS thread by default. Where NumPy
is not linked to OpenBLAS, or the library cannot be found, nothing is changed.
"""

from __future__ import annotations

import ctypes
from contextlib import contextmanager
from pathlib import Path

import numpy as np

_SETTERS = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads")


def _openblas():
    libs = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    for path in sorted(libs.glob("*openblas*")) if libs.is_dir() else []:
        try:
            lib = ctypes.CDLL(str(path))  # already loaded by NumPy: this returns the same library
        except OSError:
            continue
        setter = next((getattr(lib, n) for n in _SETTERS if hasattr(lib, n)), None)
        getter = next((getattr(lib, n) for n in _GETTERS if hasattr(lib, n)), None)
        if setter and getter:
            return setter, getter
    return None


def get_blas_threads() -> int | None:
    funcs = _openblas()
    return int(funcs[1]()) if funcs else None


@contextmanager
def blas_threads(n: int | None):
    """Within the block, NumPy's OpenBLAS uses n threads (None: leave it as it is)."""
    funcs = _openblas() if n else None
    if not funcs:
        yield
        return
    setter, getter = funcs
    before = int(getter())
    setter(int(n))
    try:
        yield
    finally:
        setter(before)
