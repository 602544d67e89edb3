"""DenseNet (Huang, Liu, van der Maaten & Weinberger 2017, "Densely connected convolutional networks", CVPR;
Sec. 3, Table 1 and Table 2).

Inside a dense block, layer l receives the concatenation of the block input and every earlier layer's
output, x_l = H_l([x_0, x_1, ..., x_{l-1}]), and adds k (the growth rate) maps of its own, so layer i of a
block reads c_0 + i*k channels. H_l is pre-activation: BN-ReLU-Conv3x3, or with a bottleneck (the "B" of
DenseNet-BC) BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k). Between blocks a transition layer BN-ReLU-Conv1x1-
AvgPool2x2 halves the resolution and, with compression theta (the "C"), keeps floor(theta*m) of m maps.

``IMAGENET`` is Table 1 (all DenseNet-BC, theta = 0.5, stem conv 7x7/2 with 2k maps, max-pool 3x3/2):

    densenet121  k=32  blocks 6, 12, 24, 16        densenet201  k=32  blocks 6, 12, 48, 32
    densenet169  k=32  blocks 6, 12, 32, 32        densenet264  k=32  blocks 6, 12, 64, 48
    densenet161  k=48  blocks 6, 12, 36, 24   (not in the paper: the authors' released ImageNet model)

``CIFAR`` is the 32x32 networks of Sec. 3 "Implementation Details" and Table 2: three dense blocks on
32x32, 16x16 and 8x8 maps, a 3x3 stem convolution with 16 maps (2k for DenseNet-BC), and BN-ReLU-global
average pool-linear at the end. Depth L counts the stem, the transitions, the final linear layer and every
convolution of the blocks, hence (L-4)/3 layers per block, (L-4)/6 with bottlenecks:

    densenet40      DenseNet    L=40,  k=12, 12 basic layers per block, theta = 1     (Table 2: 1.0M)
    densenet_bc100  DenseNet-BC L=100, k=12, 16 bottleneck layers per block, theta = 0.5  (Table 2: 0.8M)

``densenet121``, ``densenet161``, ``densenet169`` and ``densenet201`` use torchvision's module tree and
load its state_dicts key for key; ``densenet264`` and the CIFAR networks are built from the same modules.
Departures from the paper, and why:

* The ImageNet global pool is adaptive (torchvision's), so other input sizes work; at 224x224 the map is
  the paper's 7x7 and the pool is its 7x7 average.
* ``densenet161`` (k=48, stem 96) is not in the paper's Table 1; torchvision has it from the authors'
  released models, so it is here for compatibility.
* ``drop_rate`` on the ImageNet models drops the output of each dense layer only (torchvision's placement;
  the paper used no dropout on ImageNet). On the CIFAR models it follows Sec. 4.2 instead: dropout after
  every convolution except the first, i.e. also after the 1x1 bottleneck and the transition convolutions.
  The paper uses 0.2 when training without augmentation; the default here is 0.
* ``memory_efficient=True`` recomputes each layer's concatenation-BN-ReLU-Conv1 in the backward pass
  (gradient checkpointing, Pleiss et al. 2017, as torchvision does) instead of storing it: less memory,
  more time, the same numbers. Not in the paper.
* Transitions in the paper's text are "BN, 1x1 conv, 2x2 average pool"; the ReLU after the BN is the
  authors' released code and torchvision's.
* Initialisation is He normal for convolutions (the paper's [10]), BN weight 1 and bias 0, linear bias 0.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from cnnlab.models.layers import init_he_normal
from cnnlab.models.registry import Figure, Paper, documented, register_model, torchvision_figures

PAPER = Paper(
    title="Densely Connected Convolutional Networks",
    authors="Gao Huang, Zhuang Liu, Laurens van der Maaten, Kilian Q. Weinberger",
    year=2017,
    url="https://arxiv.org/abs/1608.06993",
)

# Table 1: growth rate k and the number of layers in each of the four dense blocks.
IMAGENET: dict[str, tuple[int, tuple[int, ...]]] = {
    "densenet121": (32, (6, 12, 24, 16)),
    "densenet161": (48, (6, 12, 36, 24)),
    "densenet169": (32, (6, 12, 32, 32)),
    "densenet201": (32, (6, 12, 48, 32)),
    "densenet264": (32, (6, 12, 64, 48)),
}

# Table 2: depth L, growth rate k, bottleneck and compression (DenseNet-BC), three blocks.
CIFAR: dict[str, tuple[int, int, bool, float]] = {
    "densenet40": (40, 12, False, 1.0),
    "densenet_bc100": (100, 12, True, 0.5),
}

BOTTLENECK_WIDTH = 4  # the 1x1 convolution produces 4k maps (Sec. 3, "Bottleneck layers")


class DenseLayer(nn.Module):
    """H_l: BN-ReLU-Conv3x3 (k maps), or with a bottleneck BN-ReLU-Conv1x1 (4k) then BN-ReLU-Conv3x3 (k).

    Takes the list of all earlier feature maps of its block and concatenates them itself, so the
    concatenation can be recomputed rather than stored when ``memory_efficient``.
    """

    def __init__(self, in_channels: int, growth_rate: int, bottleneck: bool = True, drop_rate: float = 0.0,
                 memory_efficient: bool = False, paper_dropout: bool = False):
        super().__init__()
        self.bottleneck = bottleneck
        self.in_channels = in_channels
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        if bottleneck:
            width = BOTTLENECK_WIDTH * growth_rate
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, stride=1, bias=False)
            self.norm2 = nn.BatchNorm2d(width)
            self.relu2 = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(width, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient
        self.paper_dropout = paper_dropout

    def _first_conv(self, *features: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, p=self.drop_rate, training=self.training) if self.drop_rate > 0 else x

    def forward(self, features: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        if isinstance(features, torch.Tensor):
            features = [features]
        if self.memory_efficient and any(f.requires_grad for f in features):
            out = cp.checkpoint(self._first_conv, *features, use_reentrant=False)
        else:
            out = self._first_conv(*features)
        if not self.bottleneck:
            return self._drop(out)
        if self.paper_dropout:
            out = self._drop(out)
        return self._drop(self.conv2(self.relu2(self.norm2(out))))


class DenseBlock(nn.Module):
    """``num_layers`` dense layers; returns [x_0, x_1, ..., x_L] concatenated: c_0 + L*k maps."""

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int, bottleneck: bool, drop_rate: float,
                 memory_efficient: bool, paper_dropout: bool):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(in_channels + i * growth_rate, growth_rate, bottleneck,
                                                             drop_rate, memory_efficient, paper_dropout))
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.children():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Module):
    """BN-ReLU-Conv1x1-AvgPool2x2 between two dense blocks (torchvision's names and order)."""

    def __init__(self, in_channels: int, out_channels: int, drop_rate: float = 0.0):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)
        self.drop_rate = float(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.relu(self.norm(x)))
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.pool(x)


class DenseNet(nn.Module):
    """torchvision's DenseNet module tree: ``features`` (stem, blocks, transitions, ``norm5``), ``classifier``.

    ``stem="imagenet"`` is conv 7x7/2 - BN - ReLU - maxpool 3x3/2 with 2k maps; ``stem="cifar"`` a single
    3x3 convolution, as in the paper's CIFAR networks.
    """

    def __init__(self, growth_rate: int, block_config: tuple[int, ...], num_init_features: int,
                 bottleneck: bool = True, compression: float = 0.5, stem: str = "imagenet",
                 drop_rate: float = 0.0, num_classes: int = 1000, in_chans: int = 3,
                 memory_efficient: bool = False, paper_dropout: bool = False):
        super().__init__()
        if stem == "imagenet":
            self.features = nn.Sequential(OrderedDict([
                ("conv0", nn.Conv2d(in_chans, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
                ("norm0", nn.BatchNorm2d(num_init_features)),
                ("relu0", nn.ReLU(inplace=True)),
                ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
            ]))
        else:
            self.features = nn.Sequential(OrderedDict([
                ("conv0", nn.Conv2d(in_chans, num_init_features, kernel_size=3, padding=1, bias=False)),
            ]))
        c = num_init_features
        for i, num_layers in enumerate(block_config):
            block = DenseBlock(num_layers, c, growth_rate, bottleneck, drop_rate, memory_efficient, paper_dropout)
            self.features.add_module(f"denseblock{i + 1}", block)
            c = block.out_channels
            if i != len(block_config) - 1:
                out = int(compression * c)  # floor(theta * m)
                self.features.add_module(f"transition{i + 1}",
                                         Transition(c, out, drop_rate if paper_dropout else 0.0))
                c = out
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.num_features = c
        self.classifier = nn.Linear(c, num_classes)

        init_he_normal(self, mode="fan_in")
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # N x 1024 x 7 x 7 for densenet121 at 224x224; N x 456 x 8 x 8 for densenet40
        x = F.relu(x, inplace=True)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


def _imagenet(k: int, blocks: tuple[int, ...], num_classes: int = 1000, in_chans: int = 3,
              memory_efficient: bool = False, drop_rate: float = 0.0) -> nn.Module:
    """A DenseNet-BC of Table 1: growth rate ``k``, dense blocks of ``blocks`` layers, compression 0.5."""
    return DenseNet(k, blocks, 2 * k, bottleneck=True, compression=0.5, stem="imagenet", drop_rate=drop_rate,
                    num_classes=num_classes, in_chans=in_chans, memory_efficient=memory_efficient)


def _cifar(depth: int, k: int, bc: bool, theta: float, num_classes: int = 10, in_chans: int = 3,
           drop_rate: float = 0.0, memory_efficient: bool = False) -> nn.Module:
    """A CIFAR DenseNet of Table 2: depth L = ``depth``, growth rate ``k``, three blocks; DenseNet-BC if ``bc``
    (bottlenecks, compression ``theta``)."""
    per_block = (depth - 4) // (6 if bc else 3)
    return DenseNet(k, (per_block,) * 3, 2 * k if bc else 16, bottleneck=bc, compression=theta, stem="cifar",
                    drop_rate=drop_rate, num_classes=num_classes, in_chans=in_chans,
                    memory_efficient=memory_efficient, paper_dropout=True)


def _imagenet_variant(name: str, tv: tuple | None, what: str):
    """Register the Table 1 network ``name`` (``IMAGENET``), with torchvision's metadata where it has weights."""
    builder = documented(partial(_imagenet, *IMAGENET[name]), f"{what}.\n\n{PAPER.citation}")
    return register_model(name=name, paper=PAPER, input_size=(3, 224, 224), summary=what,
                          figures=torchvision_figures(*tv) if tv else ())(builder)


def _cifar_variant(name: str, millions: float, what: str):
    """Register the Table 2 network ``name`` (``CIFAR``), with Table 2's parameter count."""
    depth, k, bc, theta = CIFAR[name]
    row = f"DenseNet{'-BC' if bc else ''} (L={depth}, k={k})"
    figures = (Figure("params", millions * 1e6, f"Huang et al. 2017, Table 2: {row}", 0.1e6, "CIFAR-10 (10 classes)"),)
    builder = documented(partial(_cifar, depth, k, bc, theta), f"{what}.\n\n{PAPER.citation}")
    return register_model(name=name, paper=PAPER, input_size=(3, 32, 32), num_classes=10, summary=what,
                          figures=figures)(builder)


# torchvision weights: enum, params, GFLOPS, acc@1, acc@5
densenet121 = _imagenet_variant("densenet121", ("DenseNet121_Weights", 7_978_856, 2.834, 74.434, 91.972),
                                "DenseNet-BC-121 for ImageNet: k=32, blocks 6-12-24-16 (Table 1)")
densenet161 = _imagenet_variant("densenet161", ("DenseNet161_Weights", 28_681_000, 7.728, 77.138, 93.560),
                                "DenseNet-BC-161 for ImageNet: k=48, blocks 6-12-36-24 (authors' release, torchvision)")
densenet169 = _imagenet_variant("densenet169", ("DenseNet169_Weights", 14_149_480, 3.360, 75.600, 92.806),
                                "DenseNet-BC-169 for ImageNet: k=32, blocks 6-12-32-32 (Table 1)")
densenet201 = _imagenet_variant("densenet201", ("DenseNet201_Weights", 20_013_928, 4.291, 76.896, 93.370),
                                "DenseNet-BC-201 for ImageNet: k=32, blocks 6-12-48-32 (Table 1)")
densenet264 = _imagenet_variant("densenet264", None,
                                "DenseNet-BC-264 for ImageNet: k=32, blocks 6-12-64-48 (Table 1)")

densenet40 = _cifar_variant("densenet40", 1.0,
                            "DenseNet (L=40, k=12) for CIFAR: 3 blocks of 12 BN-ReLU-Conv3x3 layers")
densenet_bc100 = _cifar_variant("densenet_bc100", 0.8, "DenseNet-BC (L=100, k=12) for CIFAR: 3 blocks of 16 "
                                "bottleneck layers, compression 0.5")
