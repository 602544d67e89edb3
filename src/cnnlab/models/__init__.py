"""The model zoo: one file per family, every model registered in ``registry``."""

from cnnlab.models import alexnet, lenet, nin, vgg, zfnet  # noqa: F401  (registers the models)
from cnnlab.models.registry import ModelCard, create_model, list_models, model_card

__all__ = ["create_model", "list_models", "model_card", "ModelCard"]
