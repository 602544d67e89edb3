"""The model zoo: one file per family, every model registered in ``registry``.

The registry's names are imported on first use (``from cnnlab.models import create_model`` imports every family,
and so PyTorch), so that ``cnnlab.models.registry`` and ``cnnlab.models.cards`` can be read without torch: the
command line lists the zoo from its cached table (``cnnlab.catalog``) in a fraction of a second.
"""

# importing a family registers its models
FAMILIES = ("alexnet", "densenet", "fractalnet", "googlenet", "inception", "lenet", "nin", "resnet", "resnet_cifar",
            "vgg", "zfnet")

__all__ = ["create_model", "list_models", "model_card", "ModelCard"]


def __getattr__(name: str):
    if name in __all__:
        from cnnlab.models import registry

        registry.list_models()  # loads the families
        return getattr(registry, name)
    raise AttributeError(f"module 'cnnlab.models' has no attribute {name!r}")
