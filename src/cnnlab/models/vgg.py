"""VGG (Simonyan & Zisserman 2015, "Very deep convolutional networks for large-scale image recognition",
ICLR; Table 1 and Table 2).

``CONFIGS`` is Table 1 of the paper, column by column: a number is a 3x3 convolution (stride 1, padding 1)
with that many filters followed by ReLU, "conv1-N" a 1x1 convolution, "M" a 2x2 stride-2 max-pool, "LRN"
local response normalisation. Every configuration ends in FC-4096, FC-4096, FC-1000 with dropout 0.5 on
the two hidden FC layers.

    A (vgg11)  A-LRN (vgg11_lrn)  B (vgg13)  C (vgg16_c)  D (vgg16)  E (vgg19)

``vgg11``, ``vgg13``, ``vgg16``, ``vgg19`` and their ``_bn`` variants use torchvision's module tree, so they
load torchvision's state_dicts key for key. Departures from the paper, and why:

* An adaptive 7x7 average pool sits before the classifier (torchvision's), so inputs other than 224x224
  work; at 224x224 the map is already 7x7 and the pool is the identity.
* Dropout is placed before FC layers 2 and 3 in torchvision's order (after the ReLU of each hidden FC
  layer), which is the paper's "dropout for the first two FC layers".
* Initialisation is torchvision's (Kaiming normal for convolutions); the paper trained A from N(0, 1e-2)
  and initialised deeper nets from A, a procedure the authors later note Glorot initialisation replaces.
* ``_bn`` variants (batch normalisation after every convolution) postdate the paper; they are torchvision's.
* LRN in A-LRN uses AlexNet's constants, as the paper says (k=2, n=5, alpha=1e-4, beta=0.75).

``vgg_cifar`` is the reduced VGG of the lecture's CIFAR-10 assignment: five stages of 3x3 convolutions with
BatchNorm and ReLU, each closed by a 3x3 stride-2 padding-1 max-pool, and one linear layer on the 512x1x1
result.
"""

from __future__ import annotations

from functools import partial

from torch import nn
import torch

from cnnlab.models.layers import LocalResponseNorm, init_he_normal
from cnnlab.models.registry import Figure, Paper, documented, register_model, torchvision_figures

PAPER = Paper(
    title="Very Deep Convolutional Networks for Large-Scale Image Recognition",
    authors="Karen Simonyan, Andrew Zisserman",
    year=2015,
    url="https://arxiv.org/abs/1409.1556",
)

CONFIGS: dict[str, list] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, "conv1-256", "M", 512, 512, "conv1-512", "M",
          512, 512, "conv1-512", "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"],
}


def make_layers(cfg: list, in_chans: int = 3, batch_norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = in_chans
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif v == "LRN":
            layers.append(LocalResponseNorm(5, 1e-4, 0.75, 2.0))
        else:
            k, out = (1, int(v.split("-")[1])) if isinstance(v, str) else (3, v)
            layers.append(nn.Conv2d(c, out, kernel_size=k, padding=k // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            c = out
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """torchvision's VGG module tree: ``features``, ``avgpool``, ``classifier``."""

    def __init__(self, features: nn.Sequential, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        init_he_normal(self.features, mode="fan_out")
        for m in self.classifier.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # N x 512 x 7 x 7 at 224x224
        x = self.avgpool(x)
        return self.classifier(torch.flatten(x, 1))


def _vgg(cfg: str, batch_norm: bool, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5) -> nn.Module:
    """VGG configuration ``cfg`` of Table 1, with BatchNorm after every convolution if ``batch_norm``."""
    return VGG(make_layers(CONFIGS[cfg], in_chans, batch_norm), num_classes, dropout)


def _table2(cfg: str, millions: int) -> Figure:
    return Figure("params", millions * 1e6, f"Simonyan & Zisserman 2015, Table 2: configuration {cfg}", 1e6)


def _variant(name: str, cfg: str, bn: bool, millions: int, tv: tuple | None, what: str):
    """Register configuration ``cfg`` (with BatchNorm if ``bn``) as model ``name``, with its Table 2 parameter
    count and, where torchvision has weights for it, their metadata."""
    figures = (_table2(cfg, millions),) + (torchvision_figures(*tv) if tv else ())
    builder = documented(partial(_vgg, cfg, bn), f"{what}.\n\n{PAPER.citation} (Table 1, configuration {cfg}).")
    return register_model(name=name, paper=PAPER, input_size=(3, 224, 224), summary=what, figures=figures)(builder)


# Each: name, Table 1 configuration, BatchNorm, Table 2 parameters (millions), torchvision weights (enum, params,
# GFLOPS, acc@1, acc@5) or None, summary
vgg11 = _variant("vgg11", "A", False, 133, ("VGG11_Weights", 132_863_336, 7.609, 69.020, 88.628),
                 "VGG configuration A, 11 weight layers")
vgg11_bn = _variant("vgg11_bn", "A", True, 133, ("VGG11_BN_Weights", 132_868_840, 7.609, 70.370, 89.810),
                    "VGG-A with batch normalisation (torchvision)")
vgg11_lrn = _variant("vgg11_lrn", "A-LRN", False, 133, None,
                     "VGG configuration A-LRN: A with LRN after the first conv")
vgg13 = _variant("vgg13", "B", False, 133, ("VGG13_Weights", 133_047_848, 11.308, 69.928, 89.246),
                 "VGG configuration B, 13 weight layers")
vgg13_bn = _variant("vgg13_bn", "B", True, 133, ("VGG13_BN_Weights", 133_053_736, 11.308, 71.586, 90.374),
                    "VGG-B with batch normalisation (torchvision)")
vgg16_c = _variant("vgg16_c", "C", False, 134, None,
                   "VGG configuration C: 16 layers, three of them 1x1 convs")
vgg16 = _variant("vgg16", "D", False, 138, ("VGG16_Weights", 138_357_544, 15.470, 71.592, 90.382),
                 "VGG configuration D, 16 weight layers")
vgg16_bn = _variant("vgg16_bn", "D", True, 138, ("VGG16_BN_Weights", 138_365_992, 15.470, 73.360, 91.516),
                    "VGG-D with batch normalisation (torchvision)")
vgg19 = _variant("vgg19", "E", False, 144, ("VGG19_Weights", 143_667_240, 19.632, 72.376, 90.876),
                 "VGG configuration E, 19 weight layers")
vgg19_bn = _variant("vgg19_bn", "E", True, 144, ("VGG19_BN_Weights", 143_678_248, 19.632, 74.218, 91.842),
                    "VGG-E with batch normalisation (torchvision)")


class VGGCifar(nn.Module):
    """The lecture's reduced VGG for 32x32 CIFAR images."""

    CONFIG = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]

    def __init__(self, num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for v in self.CONFIG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
            else:
                layers += [nn.Conv2d(c, v, kernel_size=3, stride=1, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)  # N x 512 x 1 x 1 for 32x32 input
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model(
    paper=PAPER, input_size=(3, 32, 32), num_classes=10,
    summary="the lecture's reduced VGG for CIFAR-10 (conv-BN-ReLU, 3x3/2 pooling, one linear layer)",
)
def vgg_cifar(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    """The lecture's reduced VGG for 32x32 CIFAR-10 images, after Simonyan & Zisserman (2015)."""
    return VGGCifar(num_classes, in_chans)
