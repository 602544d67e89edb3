"""cnnlab: classic convolutional neural networks, faithful to the papers, with every number explained.

The top-level names are imported on first use, so ``import cnnlab.scratch`` (the NumPy reference) does not
import PyTorch.
"""

from cnnlab.errors import CnnlabError

__all__ = ["CnnlabError", "create_model", "list_models", "model_card", "summary"]
__version__ = "0.1.0"

_LAZY = {"create_model": "cnnlab.models", "list_models": "cnnlab.models", "model_card": "cnnlab.models",
         "summary": "cnnlab.analysis.summary"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
