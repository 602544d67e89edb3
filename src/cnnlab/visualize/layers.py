"""Which layer to look at: Grad-CAM's default layer per architecture, and the default feature-map layers.

Selvaraju et al. (2017, Sec. 3) take Grad-CAM from the last convolutional layer: it is the deepest map that
still has a spatial layout, so it carries the most class-specific features with some localisation left. The
table below names that layer for each family of the zoo; where a family's configurations differ (VGG-11 to
VGG-19) a rule finds it. A model not in the table (or a layer the table names that the model lacks) falls
back to the generic rule: the last module to finish whose output is one map with more than one position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.errors import CnnlabError

LAST_RELU = "<the last ReLU whose output is a spatial map>"  # plain chains: conv5/relu5 of AlexNet, VGG's last conv
LAST_MAP = "<the last module whose output is a spatial map>"  # the generic rule

# family (as on the model card) -> candidates, the first one the model has wins
GRADCAM_LAYERS: dict[str, tuple[str, ...]] = {
    "lenet": ("c3", LAST_RELU),  # lenet5: C3 (16@10x10; C5 is 1x1); lenet5_modern: the second conv's ReLU
    "alexnet": (LAST_RELU,),  # relu5 (13x13), before the last max-pool
    "zfnet": (LAST_RELU,),  # relu5
    "vgg": (LAST_RELU,),  # the ReLU after conv5_3 (VGG-16), 14x14 on 224x224
    "nin": ("features",),  # the last mlpconv: one map per class before global average pooling
    "resnet": ("layer4",),  # conv5_x, 7x7
    "resnet_cifar": ("layer3",),  # the 8x8 stage
    "densenet": ("features.norm5",),  # after the last dense block and its BN
    "googlenet": ("inception5b",),
    "inception": ("Mixed_7c", "inception_c", "conv"),  # Inception-v3, -v4, Inception-ResNet-v2: the 8x8 block
    "fractalnet": (LAST_MAP,),
}


@dataclass(frozen=True)
class Call:
    name: str
    module: nn.Module
    shape: tuple  # output per image (no batch axis); () for a non-tensor output


def trace(model: nn.Module, input_size) -> list[Call]:
    """Every module call of one forward pass of a zero image, in the order the calls finish (a container
    after its children). Runs on the model's device: build the model on "meta" to trace it for free."""
    from cnnlab.visualize.hooks import model_device_dtype

    names = {id(m): n for n, m in model.named_modules()}
    calls: list[Call] = []

    def hook(module, args, output):
        shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else ()
        calls.append(Call(names[id(module)], module, shape))

    device, dtype = model_device_dtype(model)
    handles = [m.register_forward_hook(hook) for n, m in model.named_modules() if n]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_size), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return calls


def _spatial(c: Call) -> bool:
    return len(c.shape) == 3 and c.shape[1] * c.shape[2] > 1


def family(model: nn.Module) -> str:
    module = type(model).__module__
    return module.rsplit(".", 1)[-1] if module.startswith("cnnlab.models.") else ""


def gradcam_layer(model: nn.Module, input_size) -> str:
    """The default Grad-CAM layer of ``model`` on inputs of ``input_size`` (C, H, W)."""
    existing = dict(model.named_modules())
    calls = None
    for candidate in GRADCAM_LAYERS.get(family(model), ()) + (LAST_MAP,):
        if candidate not in (LAST_RELU, LAST_MAP):
            if candidate in existing:
                return candidate
            continue
        calls = calls if calls is not None else trace(model, input_size)
        maps = [c for c in calls if _spatial(c) and (candidate == LAST_MAP or isinstance(c.module, nn.ReLU))]
        if maps:
            return maps[-1].name
    raise CnnlabError(f"{type(model).__name__} has no layer with a spatial map on a "
                      f"{'x'.join(map(str, input_size))} input; Grad-CAM needs one")


def feature_layers(model: nn.Module, input_size, most: int = 4) -> list[str]:
    """Default layers for feature maps: the convolutions in the order they run, at most ``most`` of them
    spread from the first to the last."""
    convs = list(dict.fromkeys(c.name for c in trace(model, input_size) if isinstance(c.module, nn.Conv2d)))
    if not convs:
        raise CnnlabError(f"{type(model).__name__} has no convolution; name the layers with `layers`",
                          params=("layers",))
    if len(convs) <= most:
        return convs
    return [convs[round(i * (len(convs) - 1) / (most - 1))] for i in range(most)]


def default_gradcam_layer(name: str) -> str:
    """The Grad-CAM layer of the registered model ``name`` on its default input, found on the meta device
    (no weights are allocated)."""
    from cnnlab.models import create_model, model_card

    with torch.device("meta"):
        probe = create_model(name)
    return gradcam_layer(probe, model_card(name).input_size)
