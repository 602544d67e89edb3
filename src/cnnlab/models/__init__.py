"""The model zoo: one file per family, every model registered in ``registry``."""

from cnnlab.models import (  # noqa: F401  (importing a family registers its models)
    alexnet, densenet, fractalnet, googlenet, inception, lenet, nin, resnet, resnet_cifar, vgg, zfnet,
)
from cnnlab.models.registry import ModelCard, create_model, list_models, model_card

__all__ = ["create_model", "list_models", "model_card", "ModelCard"]
