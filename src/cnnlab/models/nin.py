"""Network in Network (Lin, Chen & Yan 2014, "Network in network", ICLR; Sec. 3 and Fig. 2).

Each "mlpconv" layer is a convolution followed by two 1x1 convolutions (the micro network, a multilayer
perceptron shared over positions), each with ReLU; the classifier is global average pooling over one
feature map per class, with no fully connected layer.

``nin_cifar`` is the CIFAR-10 model (three mlpconv layers, dropout after the first two) exactly as in the
authors' released Caffe definition, which the paper's Sec. 4.1 points to:

    conv 192 5x5 pad 2, 1x1 160, 1x1 96 -> maxpool 3x3/2 -> dropout 0.5      32 -> 16
    conv 192 5x5 pad 2, 1x1 192, 1x1 192 -> avgpool 3x3/2 -> dropout 0.5     16 -> 8
    conv 192 3x3 pad 1, 1x1 192, 1x1 10 -> global average pooling           8 -> 1

``nin`` is the ImageNet model the authors released with it (four mlpconv layers, 7.6M parameters):

    conv 96 11x11/4, 1x1 96, 1x1 96 -> maxpool 3x3/2                         224 -> 54 -> 27
    conv 256 5x5 pad 2, 1x1 256, 1x1 256 -> maxpool 3x3/2                    27 -> 13
    conv 384 3x3 pad 1, 1x1 384, 1x1 384 -> maxpool 3x3/2 -> dropout 0.5     13 -> 6
    conv 1024 3x3 pad 1, 1x1 1024, 1x1 1000 -> global average pooling        6 -> 1

Departures, and why:

* Pooling rounds up (``ceil_mode=True``) as Caffe does; with PyTorch's default floor the CIFAR map would
  shrink 32 -> 15 -> 7 instead of the released 32 -> 16 -> 8.
* The last 1x1 convolution keeps its ReLU before the global average, as in the released definitions.
* The global average is adaptive, so other input sizes work; at the published size it is the released
  8x8 (CIFAR) and 6x6 (ImageNet) average.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cnnlab.models.registry import Figure, Paper, register_model

PAPER = Paper(
    title="Network In Network",
    authors="Min Lin, Qiang Chen, Shuicheng Yan",
    year=2014,
    url="https://arxiv.org/abs/1312.4400",
)


def mlpconv(in_ch: int, channels: tuple[int, int, int], kernel: int, stride: int = 1, padding: int = 0):
    """conv kxk -> ReLU -> 1x1 -> ReLU -> 1x1 -> ReLU."""
    layers, c = [], in_ch
    for i, (out, k) in enumerate(zip(channels, (kernel, 1, 1))):
        s, p = (stride, padding) if i == 0 else (1, 0)
        layers += [(f"conv{i}", nn.Conv2d(c, out, k, stride=s, padding=p)), (f"relu{i}", nn.ReLU(inplace=True))]
        c = out
    return nn.Sequential(OrderedDict(layers))


class NiN(nn.Module):
    def __init__(self, blocks: list, pools: list, dropout_after: set[int], dropout: float):
        super().__init__()
        stages = []
        for i, (block, pool) in enumerate(zip(blocks, pools), start=1):
            stages.append((f"mlpconv{i}", block))
            if pool is not None:
                stages.append((f"pool{i}", pool))
            if i in dropout_after:
                stages.append((f"drop{i}", nn.Dropout(dropout)))
        self.features = nn.Sequential(OrderedDict(stages))
        self.gap = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.05)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.gap(self.features(x)), 1)


@register_model(
    paper=PAPER, input_size=(3, 32, 32), num_classes=10,
    summary="Network in Network for CIFAR-10: three mlpconv layers, global average pooling",
    figures=(
        Figure("test_err", 10.41, "Lin et al. 2014, Table 1: NIN + Dropout", 0.01, "CIFAR-10 test",
               dataset="cifar10"),
        Figure("test_err", 8.81, "Lin et al. 2014, Table 1: NIN + Dropout + augmentation", 0.01,
               "CIFAR-10 test, translation and flip augmentation", dataset="cifar10"),
    ),
)
def nin_cifar(num_classes: int = 10, in_chans: int = 3, dropout: float = 0.5) -> nn.Module:
    """Network in Network for CIFAR-10, Lin, Chen & Yan (2014): three mlpconv layers, global average pooling."""
    return NiN(
        blocks=[
            mlpconv(in_chans, (192, 160, 96), 5, padding=2),  # N x 96 x 32 x 32
            mlpconv(96, (192, 192, 192), 5, padding=2),  # N x 192 x 16 x 16
            mlpconv(192, (192, 192, num_classes), 3, padding=1),  # N x classes x 8 x 8
        ],
        pools=[nn.MaxPool2d(3, 2, ceil_mode=True), nn.AvgPool2d(3, 2, ceil_mode=True), None],
        dropout_after={1, 2}, dropout=dropout,
    )


@register_model(
    paper=PAPER, input_size=(3, 224, 224),
    summary="Network in Network for ImageNet: four mlpconv layers, global average pooling",
)
def nin(num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5) -> nn.Module:
    """Network in Network for ImageNet, Lin, Chen & Yan (2014): four mlpconv layers, global average pooling."""
    return NiN(
        blocks=[
            mlpconv(in_chans, (96, 96, 96), 11, stride=4),  # N x 96 x 54 x 54
            mlpconv(96, (256, 256, 256), 5, padding=2),  # N x 256 x 27 x 27
            mlpconv(256, (384, 384, 384), 3, padding=1),  # N x 384 x 13 x 13
            mlpconv(384, (1024, 1024, num_classes), 3, padding=1),  # N x classes x 6 x 6
        ],
        pools=[nn.MaxPool2d(3, 2, ceil_mode=True), nn.MaxPool2d(3, 2, ceil_mode=True),
               nn.MaxPool2d(3, 2, ceil_mode=True), None],
        dropout_after={3}, dropout=dropout,
    )
