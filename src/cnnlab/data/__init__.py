"""Datasets: official files with checksums, in-memory batches with batch augmentation, image folders, and
one way into all of them (:mod:`cnnlab.data.view`).

The names below are imported on first use, so that ``cnnlab.data.idx`` (NumPy only) can be read by the NumPy
reference without importing PyTorch.
"""

_LAZY = {"ArrayDataset": "memory", "Augment": "memory", "MemoryLoader": "memory", "load": "memory",
         "split_train_val": "memory", "DATASETS": "sources", "data_root": "sources", "locate": "sources",
         "require": "sources", "spec": "sources", "DataView": "view", "open_data": "view", "load_image": "view"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"cnnlab.data.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cnnlab.data' has no attribute {name!r}")
