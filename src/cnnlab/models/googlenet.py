"""GoogLeNet (Szegedy et al. 2015, "Going deeper with convolutions", CVPR; arXiv 2014), Table 1 and Sec. 5.

``INCEPTION`` is Table 1 of the paper, one row per inception module, in the paper's column order:
#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj. Each module runs four branches on the same input and
concatenates them along channels:

    1x1 conv | 1x1 reduce -> 3x3 conv | 1x1 reduce -> 5x5 conv | 3x3/1 max-pool -> 1x1 "pool proj"

Two builds share the table:

``googlenet_paper`` is the network as published: every convolution has a bias and a ReLU and no normalisation;
local response normalisation after conv1's pool and after conv2 (the 3x3); real 5x5 branches; a 7x7 average
pool, dropout 0.4 and a linear layer; and the two auxiliary classifiers of Sec. 5 on the outputs of 4a and
4d: 5x5 average pool with stride 3 (giving 4x4), 1x1 convolution with 128 filters, FC 1024, dropout 0.7,
linear. In training mode it returns :class:`GoogLeNetOutputs` (logits, aux_logits2, aux_logits1: torchvision's
fields and order) and the trainer adds
0.3 x each auxiliary loss, as the paper does; in eval mode it returns the logits. Details the paper leaves
open, taken from the authors' reference (BVLC Caffe) model: max-pools round their output size up (so 112
-> 56 -> 28 -> 14 -> 7, the sizes of Table 1), LRN has size 5, alpha 1e-4, beta 0.75, k 1 (Caffe divides alpha
by the size; our layer takes the undivided alpha, so it is given 1e-4 / 5), and conv1 pads by 3.

``googlenet`` is torchvision's GoogLeNet and loads its weights key for key. It departs from the paper:
batch normalisation after every convolution (and no biases), no LRN, the "5x5" branch is a 3x3 convolution
(a known slip in the reference implementation that torchvision keeps for its weights), the last max-pool is
2x2, the auxiliary heads pool adaptively to 4x4, and the main dropout is 0.2. 6,624,904 parameters without
the auxiliary heads (``aux_logits=False``), 13,004,888 with them.

The paper's Table 1 counts parameters as weights without biases, in units of 1024 ("159K" is 163,328
weights), and ops as multiply-adds. ``TABLE1`` holds both columns as printed; the card carries them
(``PAPER_TABLE``), and ``cnnlab summary googlenet_paper`` recomputes them from the model and prints them beside the
paper's (``cnnlab.analysis.paper_tables``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models.layers import GoogLeNetOutputs, LocalResponseNorm
from cnnlab.models.registry import Figure, Paper, PaperTable, register_model, torchvision_figures

PAPER = Paper(
    title="Going Deeper with Convolutions",
    authors="Christian Szegedy, Wei Liu, Yangqing Jia, Pierre Sermanet, Scott Reed, Dragomir Anguelov, "
            "Dumitru Erhan, Vincent Vanhoucke, Andrew Rabinovich",
    year=2014,
    url="https://arxiv.org/abs/1409.4842",
)

#                 in   #1x1 #3x3red #3x3 #5x5red #5x5 poolproj     (Table 1)
INCEPTION = {
    "3a": (192, 64, 96, 128, 16, 32, 32),
    "3b": (256, 128, 128, 192, 32, 96, 64),
    "4a": (480, 192, 96, 208, 16, 48, 64),
    "4b": (512, 160, 112, 224, 24, 64, 64),
    "4c": (512, 128, 128, 256, 24, 64, 64),
    "4d": (512, 112, 144, 288, 32, 64, 64),
    "4e": (528, 256, 160, 320, 32, 128, 128),
    "5a": (832, 256, 160, 320, 32, 128, 128),
    "5b": (832, 384, 192, 384, 48, 128, 128),
}

# Table 1's "params" (K = 1024 weights, biases not counted) and "ops" (millions of multiply-adds) columns.
# Rows of the paper: conv1 (7x7/2), conv2 (1x1 reduce + 3x3, "depth 2"), the nine modules, linear.
TABLE1 = {
    "conv1": (2.7, 34), "conv2": (112, 360),
    "inception3a": (159, 128), "inception3b": (380, 304),
    "inception4a": (364, 73), "inception4b": (437, 88), "inception4c": (463, 100),
    "inception4d": (580, 119), "inception4e": (840, 170),
    "inception5a": (1072, 54), "inception5b": (1388, 71),
    "linear": (1000, 1),
}
# The modules of each Table 1 row, in both builds.
TABLE1_MODULES = {"conv1": ("conv1",), "conv2": ("conv2", "conv3"), "linear": ("fc",)}
# Table 1 on the card, for `cnnlab summary googlenet_paper` to recompute and print beside the paper's figures. The
# table rounds loosely (inception4e's 840K is 847K by its own layers), so a printed figure within 1% of ours
# is taken to follow from the layer list; the larger gaps (conv1, 4c, 4d, 5a, 5b) are the table's errors.
PAPER_TABLE = PaperTable("Szegedy et al. 2014, Table 1", TABLE1, TABLE1_MODULES, options={"aux_logits": False},
                         tolerance=0.01)


class Conv(nn.Module):
    """The paper's convolution: conv with bias, then ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


class BasicConv2d(nn.Module):
    """torchvision's convolution: conv without bias, BatchNorm (eps 1e-3), ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    def __init__(self, cin: int, n1x1: int, n3x3red: int, n3x3: int, n5x5red: int, n5x5: int, pool_proj: int,
                 conv: type[nn.Module] = Conv, k5: int = 5):
        super().__init__()
        self.branch1 = conv(cin, n1x1, 1)
        self.branch2 = nn.Sequential(conv(cin, n3x3red, 1), conv(n3x3red, n3x3, 3, padding=1))
        self.branch3 = nn.Sequential(conv(cin, n5x5red, 1), conv(n5x5red, n5x5, k5, padding=k5 // 2))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True), conv(cin, pool_proj, 1))
        self.out_channels = n1x1 + n3x3 + n5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class AuxClassifier(nn.Module):
    """Sec. 5: 5x5/3 average pool (4x4 out of 14x14), 1x1 conv 128 + ReLU, FC 1024 + ReLU, dropout 0.7,
    linear. ``adaptive`` pools to 4x4 whatever the input size (torchvision)."""

    def __init__(self, cin: int, num_classes: int, conv: type[nn.Module] = Conv, adaptive: bool = False,
                 dropout: float = 0.7):
        super().__init__()
        self.adaptive = adaptive
        self.conv = conv(cin, 128, 1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # N x 512 x 14 x 14 (4a) or N x 528 x 14 x 14 (4d)
        x = F.adaptive_avg_pool2d(x, (4, 4)) if self.adaptive else F.avg_pool2d(x, 5, stride=3)
        x = self.conv(x)  # N x 128 x 4 x 4
        x = F.relu(self.fc1(torch.flatten(x, 1)), inplace=True)
        return self.fc2(self.dropout(x))


class GoogLeNet(nn.Module):
    """Both builds, with torchvision's module names (so ``googlenet`` loads its weights)."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, *, paper: bool = True, aux_logits: bool = True,
                 dropout: float | None = None, transform_input: bool = False):
        super().__init__()
        conv = Conv if paper else BasicConv2d
        self.paper = paper
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        self.conv1 = conv(in_chans, 64, 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.lrn1 = LocalResponseNorm(5, 1e-4 / 5, 0.75, 1.0) if paper else nn.Identity()
        self.conv2 = conv(64, 64, 1)
        self.conv3 = conv(64, 192, 3, padding=1)
        self.lrn2 = LocalResponseNorm(5, 1e-4 / 5, 0.75, 1.0) if paper else nn.Identity()
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        k5 = 5 if paper else 3
        for name in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"):
            setattr(self, f"inception{name}", Inception(*INCEPTION[name], conv=conv, k5=k5))
            if name == "3b":
                self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
            if name == "4e":
                self.maxpool4 = nn.MaxPool2d(3 if paper else 2, stride=2, ceil_mode=True)
        if aux_logits:
            self.aux1 = AuxClassifier(512, num_classes, conv, adaptive=not paper)
            self.aux2 = AuxClassifier(528, num_classes, conv, adaptive=not paper)
        else:
            self.aux1 = self.aux2 = None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))  # the paper's 7x7/1 average pool at 224x224
        self.dropout = nn.Dropout(p=(0.4 if paper else 0.2) if dropout is None else dropout)
        self.fc = nn.Linear(1024, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                # torchvision's truncated normal; the paper gives no initialisation (DistBelief defaults)
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:
        if self.transform_input:
            # torchvision's weights expect [-1, 1] inputs; this maps ImageNet-normalised ones to that range
            mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
            std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
            x = (x * std + mean - 0.5) / 0.5
        x = self.conv1(x)  # N x 64 x 112 x 112
        x = self.lrn1(self.maxpool1(x))  # N x 64 x 56 x 56
        x = self.lrn2(self.conv3(self.conv2(x)))  # N x 192 x 56 x 56
        x = self.maxpool2(x)  # N x 192 x 28 x 28
        x = self.inception3b(self.inception3a(x))  # N x 480 x 28 x 28
        x = self.maxpool3(x)  # N x 480 x 14 x 14
        x = self.inception4a(x)  # N x 512 x 14 x 14
        train_aux = self.aux_logits and self.training
        aux1 = self.aux1(x) if train_aux else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # N x 528 x 14 x 14
        aux2 = self.aux2(x) if train_aux else None
        x = self.inception4e(x)  # N x 832 x 14 x 14
        x = self.maxpool4(x)  # N x 832 x 7 x 7
        x = self.inception5b(self.inception5a(x))  # N x 1024 x 7 x 7
        x = torch.flatten(self.avgpool(x), 1)  # N x 1024
        x = self.fc(self.dropout(x))
        return GoogLeNetOutputs(x, aux2, aux1) if train_aux else x  # torchvision's order


@register_model(
    paper=PAPER, input_size=(3, 224, 224), paper_table=PAPER_TABLE,
    summary="GoogLeNet as published: Table 1 inception modules, LRN, real 5x5 branches, two aux classifiers",
    figures=(
        Figure("top5_err", 6.67, "Szegedy et al. 2014, Table 3 (7 models, 144 crops, ILSVRC 2014 test)", 0.01),
        Figure("top5_err", 10.07, "Szegedy et al. 2014, Table 3 (1 model, 1 crop, validation)", 0.01),
        Figure("macs", 1.5e9, "Szegedy et al. 2014, Sec. 1 ('1.5 billion multiply-adds at inference time')",
               0.1e9, "Table 1's ops column sums to 1.50 G, but its conv1 row (34M) is less than the 118M that "
               "a 7x7x3 conv with 64 filters costs at 112x112; with conv1 recomputed the sum is 1.58 G",
               options={"aux_logits": False}),
    ),
)
def googlenet_paper(num_classes: int = 1000, in_chans: int = 3, aux_logits: bool = True,
                    dropout: float = 0.4) -> nn.Module:
    """GoogLeNet as published by Szegedy et al. (2014), "Going deeper with convolutions": Table 1, Sec. 5."""
    return GoogLeNet(num_classes, in_chans, paper=True, aux_logits=aux_logits, dropout=dropout)


@register_model(
    paper=PAPER, input_size=(3, 224, 224),
    summary="torchvision's GoogLeNet: BatchNorm, 3x3 '5x5' branches, loads its weights key for key",
    figures=(
        *torchvision_figures("GoogLeNet_Weights", 6_624_904, 1.498, 69.778, 89.530, options={"aux_logits": False},
                             params_note="without the auxiliary heads"),
    ),
)
def googlenet(num_classes: int = 1000, in_chans: int = 3, aux_logits: bool = True, dropout: float = 0.2,
              transform_input: bool = False) -> nn.Module:
    """torchvision's GoogLeNet (BatchNorm, 3x3 '5x5' branches), after Szegedy et al. (2014); loads its weights."""
    return GoogLeNet(num_classes, in_chans, paper=False, aux_logits=aux_logits, dropout=dropout,
                     transform_input=transform_input)
