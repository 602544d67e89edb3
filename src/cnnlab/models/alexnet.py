"""AlexNet (Krizhevsky, Sutskever & Hinton 2012, "ImageNet classification with deep convolutional neural
networks", NIPS; Fig. 2 and Sec. 3-4).

``alexnet_paper`` is the network of the paper:

    227x227x3 -> conv1 96 11x11/4 -> ReLU -> LRN -> maxpool 3x3/2      55x55x96 -> 27x27x96
    -> conv2 256 5x5 pad 2 (2 towers) -> ReLU -> LRN -> maxpool 3x3/2  27x27x256 -> 13x13x256
    -> conv3 384 3x3 pad 1 (reads both towers) -> ReLU                 13x13x384
    -> conv4 384 3x3 pad 1 (2 towers) -> ReLU                          13x13x384
    -> conv5 256 3x3 pad 1 (2 towers) -> ReLU -> maxpool 3x3/2          13x13x256 -> 6x6x256
    -> FC 4096 -> ReLU -> dropout 0.5 -> FC 4096 -> ReLU -> dropout 0.5 -> FC 1000

60,965,224 parameters. The two GPUs of the paper are expressed as grouped convolutions (``groups=2``) in
conv2, conv4 and conv5, the layers whose kernels see only the maps on their own GPU; ``towers=1`` gives the
single-tower network of the lecture's table (62,378,344 parameters). Departures from the paper, and why:

* Input 227x227, not the 224x224 the paper prints: with an 11x11 stride-4 filter only 227 gives the
  paper's 55x55 conv1 output ((227-11)/4+1 = 55); 224 does not fit.
* LRN uses the paper's constants (k=2, n=5, alpha=1e-4, beta=0.75) with the paper's formula (see
  ``layers.LocalResponseNorm``) and normalises within each tower, as each GPU did.
* Initialisation follows Sec. 5: weights N(0, 0.01^2); biases 1 in conv2, conv4, conv5 and the hidden FC
  layers, 0 elsewhere.

``alexnet`` is torchvision's variant ("One weird trick", Krizhevsky 2014): 64-192-384-256-256 filters,
conv1 11x11/4 with padding 2 on 224x224 input, no LRN, a single tower, an adaptive 6x6 average pool, and
dropout *before* the first two FC layers. It loads torchvision's ``alexnet`` state_dict key for key
(61,100,840 parameters).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.layers import LocalResponseNorm
from cnnlab.models.registry import Figure, Paper, register_model, torchvision_figures

PAPER = Paper(
    title="ImageNet Classification with Deep Convolutional Neural Networks",
    authors="Alex Krizhevsky, Ilya Sutskever, Geoffrey E. Hinton",
    year=2012,
    url="https://papers.nips.cc/paper/4824-imagenet-classification-with-deep-convolutional-neural-networks",
)
TORCHVISION_PAPER = Paper(
    title="One weird trick for parallelizing convolutional neural networks",
    authors="Alex Krizhevsky",
    year=2014,
    url="https://arxiv.org/abs/1404.5997",
)


class AlexNet(nn.Module):
    """torchvision's AlexNet, same module tree and parameter names."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 64, kernel_size=11, stride=4, padding=2),  # N x 64 x 55 x 55
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # N x 64 x 27 x 27
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # N x 192 x 13 x 13
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # N x 256 x 6 x 6
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class AlexNetPaper(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, towers: int = 2, dropout: float = 0.5):
        super().__init__()
        if towers not in (1, 2):
            raise CnnlabError(f"towers must be 1 (one GPU) or 2 (the paper's two GPUs), got {towers!r}")
        t = towers
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(in_chans, 96, 11, stride=4)),  # N x 96 x 55 x 55
            ("relu1", nn.ReLU(inplace=True)),
            ("norm1", LocalResponseNorm(5, 1e-4, 0.75, 2.0, groups=t)),
            ("pool1", nn.MaxPool2d(3, stride=2)),  # N x 96 x 27 x 27
            ("conv2", nn.Conv2d(96, 256, 5, padding=2, groups=t)),  # N x 256 x 27 x 27
            ("relu2", nn.ReLU(inplace=True)),
            ("norm2", LocalResponseNorm(5, 1e-4, 0.75, 2.0, groups=t)),
            ("pool2", nn.MaxPool2d(3, stride=2)),  # N x 256 x 13 x 13
            ("conv3", nn.Conv2d(256, 384, 3, padding=1)),  # both towers feed conv3
            ("relu3", nn.ReLU(inplace=True)),
            ("conv4", nn.Conv2d(384, 384, 3, padding=1, groups=t)),
            ("relu4", nn.ReLU(inplace=True)),
            ("conv5", nn.Conv2d(384, 256, 3, padding=1, groups=t)),
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
        ones = {"features.conv2", "features.conv4", "features.conv5", "classifier.fc6", "classifier.fc7"}
        for name, m in self.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.constant_(m.bias, 1.0 if name in ones else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model(
    paper=TORCHVISION_PAPER, input_size=(3, 224, 224),
    summary="torchvision's AlexNet (64-192-384-256-256, no LRN); loads torchvision weights",
    figures=(
        *torchvision_figures("AlexNet_Weights", 61_100_840, 0.714, 56.522, 79.066),
    ),
)
def alexnet(num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5) -> nn.Module:
    """torchvision's AlexNet, the one-tower variant of Krizhevsky (2014), "One weird trick"; loads its weights."""
    return AlexNet(num_classes, in_chans, dropout)


@register_model(
    paper=PAPER, input_size=(3, 227, 227),
    summary="AlexNet as published: 96-256-384-384-256, LRN, two GPU towers as grouped convs",
    figures=(
        Figure("params", 60e6, "Krizhevsky et al. 2012, abstract: 60 million parameters", 1e6,
               "a round number in the abstract"),
        Figure("neurons", 650_000, "Krizhevsky et al. 2012, abstract: 650,000 neurons", 10_000,
               "a round number in the abstract"),
        Figure("params", 62_378_344, "lecture table, single tower", 1, "", {"towers": 1}),
        Figure("top1_err", 37.5, "Krizhevsky et al. 2012, Table 1", 0.1, "ILSVRC-2010 test, one CNN"),
        Figure("top5_err", 17.0, "Krizhevsky et al. 2012, Table 1", 0.1, "ILSVRC-2010 test, one CNN"),
    ),
)
def alexnet_paper(num_classes: int = 1000, in_chans: int = 3, towers: int = 2, dropout: float = 0.5) -> nn.Module:
    """AlexNet as published by Krizhevsky, Sutskever & Hinton (2012): LRN, two GPU towers as grouped convs."""
    return AlexNetPaper(num_classes, in_chans, towers, dropout)
