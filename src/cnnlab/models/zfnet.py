"""ZFNet (Zeiler & Fergus 2013/2014, "Visualizing and understanding convolutional networks", ECCV;
Fig. 3 and Sec. 5).

The network of Fig. 3, which the authors reached by looking at AlexNet's first layers through a deconvnet
and shrinking conv1's filters and stride:

    224x224x3 -> conv1 96 7x7/2 -> ReLU -> maxpool 3x3/2 -> contrast norm   110x110x96 -> 55x55x96
    -> conv2 256 5x5/2 -> ReLU -> maxpool 3x3/2 -> contrast norm             26x26x256 -> 13x13x256
    -> conv3 384 3x3 -> conv4 384 3x3 -> conv5 256 3x3 -> maxpool 3x3/2       13x13 -> 6x6x256
    -> FC 4096 -> FC 4096 -> FC 1000 (dropout 0.5 on the two hidden FC layers)

Departures from the paper, and why:

* Padding is not printed in the paper; conv1 uses padding 1 and the first two max-pools padding 1, the
  only choices that reproduce Fig. 3's 110, 55, 26 and 13 from a 224 input. conv3-conv5 use padding 1
  (13x13 stays 13x13, as drawn).
* "Contrast normalized across feature maps" is implemented as AlexNet's local response normalisation with
  AlexNet's constants (k=2, n=5, alpha=1e-4, beta=0.75); the paper gives no constants.
* The renormalisation of conv1 filters whose RMS exceeds 0.1 (Sec. 3) is a training procedure, not part
  of the architecture; cnnlab's trainer does not implement it yet.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cnnlab.models.layers import LocalResponseNorm
from cnnlab.models.registry import Figure, Paper, register_model

PAPER = Paper(
    title="Visualizing and Understanding Convolutional Networks",
    authors="Matthew D. Zeiler, Rob Fergus",
    year=2013,
    url="https://arxiv.org/abs/1311.2901",
)


class ZFNet(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(in_chans, 96, 7, stride=2, padding=1)),  # N x 96 x 110 x 110
            ("relu1", nn.ReLU(inplace=True)),
            ("pool1", nn.MaxPool2d(3, stride=2, padding=1)),  # N x 96 x 55 x 55
            ("norm1", LocalResponseNorm(5, 1e-4, 0.75, 2.0)),
            ("conv2", nn.Conv2d(96, 256, 5, stride=2)),  # N x 256 x 26 x 26
            ("relu2", nn.ReLU(inplace=True)),
            ("pool2", nn.MaxPool2d(3, stride=2, padding=1)),  # N x 256 x 13 x 13
            ("norm2", LocalResponseNorm(5, 1e-4, 0.75, 2.0)),
            ("conv3", nn.Conv2d(256, 384, 3, padding=1)),
            ("relu3", nn.ReLU(inplace=True)),
            ("conv4", nn.Conv2d(384, 384, 3, padding=1)),
            ("relu4", nn.ReLU(inplace=True)),
            ("conv5", nn.Conv2d(384, 256, 3, padding=1)),
            ("relu5", nn.ReLU(inplace=True)),
            ("pool5", nn.MaxPool2d(3, stride=2)),  # N x 256 x 6 x 6
        ]))
        self.classifier = nn.Sequential(OrderedDict([
            ("fc6", nn.Linear(256 * 6 * 6, 4096)),
            ("relu6", nn.ReLU(inplace=True)),
            ("drop6", nn.Dropout(dropout)),
            ("fc7", nn.Linear(4096, 4096)),
            ("relu7", nn.ReLU(inplace=True)),
            ("drop7", nn.Dropout(dropout)),
            ("fc8", nn.Linear(4096, num_classes)),
        ]))
        # Sec. 3: weights start at 1e-2, biases at 0.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model(
    paper=PAPER, input_size=(3, 224, 224),
    summary="ZFNet: AlexNet with conv1 7x7/2 and conv2 5x5/2, one tower",
    figures=(
        Figure("top1_err", 38.4, "Zeiler & Fergus 2014, Table 2: 1 convnet as per Fig. 3", 0.1,
               "ILSVRC-2012 val"),
        Figure("top5_err", 16.5, "Zeiler & Fergus 2014, Table 2: 1 convnet as per Fig. 3", 0.1,
               "ILSVRC-2012 val"),
    ),
)
def zfnet(num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5) -> nn.Module:
    """ZFNet, Zeiler & Fergus (2013), "Visualizing and understanding convolutional networks", Fig. 3."""
    return ZFNet(num_classes, in_chans, dropout)
