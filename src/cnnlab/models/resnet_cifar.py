"""ResNets for CIFAR-10: He et al. 2016 (Sec. 4.2), their plain twins, stochastic depth (Huang et al. 2016)
and Wide ResNets (Zagoruyko & Komodakis 2016).

He et al., Sec. 4.2: a 3x3 convolution with 16 filters, then three stages of n basic blocks (two 3x3
convolutions each) with 16, 32 and 64 filters on 32x32, 16x16 and 8x8 maps, then global average pooling and a
10-way linear layer: 6n + 2 weighted layers. ``DEPTHS`` maps depth to n. Every shortcut is the identity;
where a stage halves the resolution and doubles the width it is option A: every second pixel, padded with
zero channels — so a ResNet has exactly the parameters of its plain twin (``plainN``, Fig. 6 left: the same
layers without shortcuts, for the degradation experiment). The paper's table of results (Table 6):

    depth  20     32     44     56     110    1202
    n      3      5      7      9      18     200
    params 0.27M  0.46M  0.66M  0.85M  1.7M   19.4M

``drop_path_rate`` is stochastic depth (see ``resnet``): linear decay over the blocks, whole mini-batch,
branch scaled by its survival probability at test time. ``resnet110_sd`` is Huang et al.'s CIFAR setting,
ResNet-110 with p_L = 0.5 (``drop_path_rate=0.5``). Huang et al. subsample their shortcuts with a 1x1
average pool of stride 2, which is the same as taking every second pixel.

Wide ResNets (``wrn16_4``, ``wrn28_10``, ``wrn40_4``: WRN-d-k) use pre-activation blocks (He et al. 2016b):
BN-ReLU-conv3x3-[dropout]-BN-ReLU-conv3x3, stages of 16k, 32k and 64k filters with (d - 4) / 6 blocks each, a
1x1 projection shortcut where the width or resolution changes (taken, as in the authors' code, from the
block's pre-activated input), and a final BN-ReLU before pooling. ``dropout`` is the paper's dropout between
the two convolutions (0.3 in its best CIFAR results).

Departures: initialisation is Kaiming normal (fan-out) for convolutions, as in the papers' code; the ResNet
paper does not say where the zero channels go (we append them after the existing ones).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.layers import ResidualBlock, init_he_normal, linear_drop_probs
from cnnlab.models.registry import Figure, Paper, documented, register_model
from cnnlab.models.resnet import PAPER, WIDE, ZeroPadShortcut

SD_PAPER = Paper(
    title="Deep Networks with Stochastic Depth",
    authors="Gao Huang, Yu Sun, Zhuang Liu, Daniel Sedra, Kilian Q. Weinberger",
    year=2016,
    url="https://arxiv.org/abs/1603.09382",
)

# depth: (n blocks per stage, Table 6 params in millions and their rounding, Table 6 CIFAR-10 test error %)
DEPTHS = {
    20: (3, 0.27, 0.01, 8.75),
    32: (5, 0.46, 0.01, 7.51),
    44: (7, 0.66, 0.01, 7.17),
    56: (9, 0.85, 0.01, 6.97),
    110: (18, 1.7, 0.1, 6.43),
    1202: (200, 19.4, 0.1, 7.93),
}


class CifarBlock(ResidualBlock):
    """Two 3x3 convolutions with BatchNorm; identity or option-A shortcut (none in a plain net)."""

    def __init__(self, cin: int, cout: int, stride: int, residual: bool, drop_prob: float):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.residual = residual
        self.drop_prob = drop_prob
        self.shortcut = ZeroPadShortcut(cout - cin, stride) if residual and (stride != 1 or cin != cout) else None

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def skip(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return x if self.shortcut is None else self.shortcut(x)

    def post(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3, residual: bool = True,
                 drop_path_rate: float = 0.0):
        super().__init__()
        if (depth - 2) % 6:
            raise CnnlabError(f"a CIFAR ResNet has 6n + 2 layers; {depth} is not of that form")
        if not 0.0 <= drop_path_rate < 1.0:
            raise CnnlabError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        probs = iter(linear_drop_probs(3 * n, drop_path_rate if residual else 0.0))
        cin = 16
        for i, width in enumerate((16, 32, 64)):
            blocks = []
            for b in range(n):
                stride = 2 if i > 0 and b == 0 else 1
                blocks.append(CifarBlock(cin, width, stride, residual, next(probs)))
                cin = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        init_he_normal(self, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # N x 16 x 32 x 32
        x = self.layer1(x)  # N x 16 x 32 x 32
        x = self.layer2(x)  # N x 32 x 16 x 16
        x = self.layer3(x)  # N x 64 x 8 x 8
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _resnet(depth: int, num_classes: int = 10, in_chans: int = 3, drop_path_rate: float = 0.0) -> nn.Module:
    """The ``depth``-layer CIFAR-10 ResNet of Sec. 4.2: 6n + 2 layers, option A shortcuts."""
    return CifarResNet(depth, num_classes, in_chans, True, drop_path_rate)


def _plain(depth: int, num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    """The plain twin of the ``depth``-layer CIFAR-10 ResNet: the same layers without shortcuts."""
    return CifarResNet(depth, num_classes, in_chans, False)


def _variant(depth: int, plain: bool = False):
    """Register the ``depth``-layer ResNet of Table 6 as ``resnet<depth>``, or its plain twin of Fig. 6 as
    ``plain<depth>``, with Table 6's parameter count (and, for the ResNet, its test error)."""
    n, millions, precision, error = DEPTHS[depth]
    table6 = "He et al. 2016, Table 6"
    figures = (Figure("params", millions * 1e6, table6, precision * 1e6),
               Figure("test_err", error, table6 + " (CIFAR-10, augmented)", 0.01, dataset="cifar10"))
    if plain:
        name, builder, figures = f"plain{depth}", partial(_plain, depth), figures[:1]
        what = f"the {depth}-layer plain twin of ResNet-{depth} (no shortcuts)"
    else:
        name, builder = f"resnet{depth}", partial(_resnet, depth)
        what = f"ResNet-{depth} for CIFAR-10 ({n} blocks per stage, option A)"
    documented(builder, f"{what}.\n\n{PAPER.citation} (Sec. 4.2, Table 6).")
    return register_model(name=name, paper=PAPER, input_size=(3, 32, 32), num_classes=10, summary=what,
                          figures=figures)(builder)


# Table 6's networks (DEPTHS), and the plain twins Fig. 6 compares them with (none of 1202 layers)
resnet20 = _variant(20)
resnet32 = _variant(32)
resnet44 = _variant(44)
resnet56 = _variant(56)
resnet110 = _variant(110)
resnet1202 = _variant(1202)
plain20 = _variant(20, plain=True)
plain32 = _variant(32, plain=True)
plain44 = _variant(44, plain=True)
plain56 = _variant(56, plain=True)
plain110 = _variant(110, plain=True)


@register_model(
    paper=SD_PAPER, input_size=(3, 32, 32), num_classes=10,
    summary="ResNet-110 with stochastic depth, p_L = 0.5 (Huang et al.'s CIFAR setting)",
    figures=(Figure("test_err", 5.25, "Huang et al. 2016, Table 1 (CIFAR-10+, 110 layers, stochastic depth)",
                    0.01, dataset="cifar10"),
             Figure("params", 1.7e6, "He et al. 2016, Table 6 (the same 110-layer network)", 0.1e6)),
)
def resnet110_sd(num_classes: int = 10, in_chans: int = 3, drop_path_rate: float = 0.5) -> nn.Module:
    """ResNet-110 with stochastic depth, p_L = 0.5: the CIFAR-10 setting of Huang et al. (2016), Sec. 4."""
    return CifarResNet(110, num_classes, in_chans, True, drop_path_rate)


class WideBlock(ResidualBlock):
    """Pre-activation basic block B(3,3) of Zagoruyko & Komodakis, with dropout between the convolutions."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float, drop_prob: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
        self.drop_prob = drop_prob

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(x))

    def branch(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.bn2(self.dropout(self.conv1(h)))))

    def skip(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        # where the shape changes, the projection reads the pre-activated input, as in the authors' code
        return x if self.shortcut is None else self.shortcut(h)


class WideResNet(nn.Module):
    def __init__(self, depth: int, k: int, num_classes: int = 10, in_chans: int = 3, dropout: float = 0.0,
                 drop_path_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise CnnlabError(f"a Wide ResNet has 6n + 4 layers; {depth} is not of that form")
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        probs = iter(linear_drop_probs(3 * n, drop_path_rate))
        cin = 16
        for i, width in enumerate((16 * k, 32 * k, 64 * k)):
            blocks = []
            for b in range(n):
                stride = 2 if i > 0 and b == 0 else 1
                blocks.append(WideBlock(cin, width, stride, dropout, next(probs)))
                cin = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(cin)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)
        init_he_normal(self, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # N x 16 x 32 x 32
        x = self.layer1(x)  # N x 16k x 32 x 32
        x = self.layer2(x)  # N x 32k x 16 x 16
        x = self.layer3(x)  # N x 64k x 8 x 8
        x = F.relu(self.bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# WRN-d-k: (depth, widening factor, Table 4 params in millions, or None where the paper prints none)
WIDE_CONFIGS = {"wrn16_4": (16, 4, 2.7), "wrn28_10": (28, 10, 36.5), "wrn40_4": (40, 4, 8.9)}


def _wrn(depth: int, k: int, num_classes: int = 10, in_chans: int = 3, dropout: float = 0.0,
         drop_path_rate: float = 0.0) -> nn.Module:
    """WRN-``depth``-``k`` for CIFAR: pre-activation basic blocks, ``k`` times wider than ResNet's."""
    return WideResNet(depth, k, num_classes, in_chans, dropout, drop_path_rate)


def _wide_variant(name: str):
    """Register WRN-d-k of ``WIDE_CONFIGS`` as ``name``, with Table 4's parameter count."""
    depth, k, millions = WIDE_CONFIGS[name]
    what = f"Wide ResNet WRN-{depth}-{k} for CIFAR (pre-activation, {k}x wider)"
    figures = (Figure("params", millions * 1e6, f"Zagoruyko & Komodakis 2016, Table 4 (WRN-{depth}-{k})", 0.1e6),)
    builder = documented(partial(_wrn, depth, k), f"{what}.\n\n{WIDE.citation} (Table 4).")
    return register_model(name=name, paper=WIDE, input_size=(3, 32, 32), num_classes=10, figures=figures,
                          summary=what)(builder)


wrn16_4 = _wide_variant("wrn16_4")
wrn28_10 = _wide_variant("wrn28_10")
wrn40_4 = _wide_variant("wrn40_4")
