"""cnnlab: classic convolutional neural networks, faithful to the papers, with every number explained.

The top-level names are imported on first use, so ``import cnnlab.scratch`` (the NumPy reference) does not
import PyTorch.
"""

from cnnlab.errors import CnnlabError

__all__ = ["CnnlabError", "TrainConfig", "create_model", "list_models", "model_card", "summary", "train"]
__version__ = "0.1.0"

# create_model loads weights too (pretrained=...), so it lives with them; cnnlab.models.create_model builds only
_LAZY = {"create_model": "cnnlab.transfer.weights", "list_models": "cnnlab.models", "model_card": "cnnlab.models",
         "summary": "cnnlab.analysis.summary", "TrainConfig": "cnnlab.train"}
# subpackages that are also called: cnnlab.train("lenet5", epochs=2)
_CALLABLE = {"train"}


def __getattr__(name: str):
    if name in _CALLABLE:
        import importlib

        return importlib.import_module(f"cnnlab.{name}")
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
