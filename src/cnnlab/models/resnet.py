"""ResNet for ImageNet (He, Zhang, Ren, Sun 2016, "Deep residual learning for image recognition", CVPR,
Table 1), its plain baselines, ResNeXt (Xie et al. 2017) and Wide ResNet-50/101 (Zagoruyko & Komodakis 2016,
torchvision's ImageNet variant), with stochastic depth (Huang et al. 2016) on every one of them.

``STAGES`` is Table 1 of the paper: the block type and the number of blocks in conv2_x ... conv5_x. Every
network starts with a 7x7/2 convolution (64 filters) and a 3x3/2 max-pool, and ends with global average
pooling and one fully connected layer. Stages 3-5 halve the resolution in their first block; a projection
shortcut (1x1 convolution + BatchNorm, the paper's option B) matches the shapes where they change.

Where the stride sits in a bottleneck block is the one place the two common builds differ:

* ``resnet50``, ``resnet101``, ``resnet152`` are torchvision's ("ResNet v1.5"): the 3x3 convolution has stride
  2. They load torchvision's weights key for key. This costs more multiply-adds (4.09 G for ResNet-50) and
  is slightly more accurate.
* ``resnet50_paper``, ``resnet101_paper``, ``resnet152_paper`` follow the paper (and the authors' released Caffe
  models): the first 1x1 convolution has stride 2. Their multiply-adds reproduce the paper's Table 1 (3.8,
  7.6, 11.3 x 10^9). The state_dict keys are the same as torchvision's, but torchvision's weights were
  trained with the other stride placement: loading them works and gives a different (worse) network.

For 18 and 34 layers (basic blocks) the two placements coincide. ``plain18`` and ``plain34`` are the
paper's plain baselines (Sec. 3.3, Fig. 3 middle): the same layers without any shortcut.

``drop_path_rate`` (every builder) is stochastic depth as Huang et al. define it: during training the
residual branch of block l (of L) is skipped for a whole mini-batch with probability l/L x drop_path_rate
(linear decay, Eq. 4; the last block's survival probability is p_L = 1 - drop_path_rate), leaving only the
shortcut; at test time every branch runs and is multiplied by its survival probability (Eq. 5). Skipping
the branch saves its computation, which is the paper's speed-up. Departures from the papers:

* BatchNorm after every convolution and the initialisation are torchvision's (Kaiming normal, fan-out);
  ``zero_init_residual`` (off by default) starts each block as the identity (Goyal et al. 2017).
* An adaptive average pool replaces the 7x7 one so that inputs other than 224x224 work; at 224 it is the
  same.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.layers import ResidualBlock, init_he_normal, linear_drop_probs
from cnnlab.models.registry import Figure, Paper, documented, register_model, torchvision_figures

PAPER = Paper(
    title="Deep Residual Learning for Image Recognition",
    authors="Kaiming He, Xiangyu Zhang, Shaoqing Ren, Jian Sun",
    year=2016,
    url="https://arxiv.org/abs/1512.03385",
)
RESNEXT = Paper(
    title="Aggregated Residual Transformations for Deep Neural Networks",
    authors="Saining Xie, Ross Girshick, Piotr Dollar, Zhuowen Tu, Kaiming He",
    year=2017,
    url="https://arxiv.org/abs/1611.05431",
)
WIDE = Paper(
    title="Wide Residual Networks",
    authors="Sergey Zagoruyko, Nikos Komodakis",
    year=2016,
    url="https://arxiv.org/abs/1605.07146",
)


class _Block(ResidualBlock):
    """What both blocks share: torchvision's ``downsample`` shortcut (None: the identity) and a ReLU after
    the sum. ``shortcut=False`` is the plain baselines' block."""

    def skip(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)

    def post(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x)


class BasicBlock(_Block):
    """Two 3x3 convolutions (Fig. 2 left / Fig. 5 left)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, stride_on: str = "3x3", shortcut: bool = True,
                 drop_prob: float = 0.0):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("basic blocks have no groups or width multiplier (ResNeXt and Wide use bottlenecks)")
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.residual = shortcut
        self.drop_prob = drop_prob

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))


class Bottleneck(_Block):
    """1x1 reduce, 3x3, 1x1 expand (x4) (Fig. 5 right). ``groups`` > 1 makes it ResNeXt's block (Fig. 3c
    of Xie et al.); ``base_width`` scales the inner width (128 for Wide ResNet-50-2)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, stride_on: str = "3x3", shortcut: bool = True,
                 drop_prob: float = 0.0):
        super().__init__()
        width = int(planes * base_width / 64) * groups
        s1, s3 = (stride, 1) if stride_on == "1x1" else (1, stride)
        self.conv1 = nn.Conv2d(cin, width, 1, s1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, s3, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.residual = shortcut
        self.drop_prob = drop_prob

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


# Table 1: block type and blocks per stage (conv2_x, conv3_x, conv4_x, conv5_x)
STAGES: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ZeroPadShortcut(nn.Module):
    """Option A of the paper (Sec. 3.3): the identity, subsampled by taking every ``stride``-th pixel and
    padded with zero channels where the block widens. No parameters."""

    def __init__(self, extra_channels: int, stride: int):
        super().__init__()
        self.extra, self.stride = extra_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))

    def extra_repr(self) -> str:
        return f"extra_channels={self.extra}, stride={self.stride}"


SHORTCUTS = {
    "A": "identity, zero-padded where the shape changes (no parameters)",
    "B": "identity, projection where the shape changes (torchvision, the paper's default for 50+ layers)",
    "C": "projection on every block",
    "none": "no shortcut: the plain network",
}


class ResNet(nn.Module):
    """torchvision's module tree: conv1, bn1, relu, maxpool, layer1-4, avgpool, fc.

    ``shortcut`` is the paper's option (Sec. 3.3 and Table 3): see ``SHORTCUTS``.
    """

    def __init__(self, depth: int, num_classes: int = 1000, in_chans: int = 3, *, groups: int = 1,
                 width_per_group: int = 64, stride_on: str = "3x3", shortcut: str = "B",
                 drop_path_rate: float = 0.0, zero_init_residual: bool = False):
        super().__init__()
        block, counts = STAGES[depth]
        if stride_on not in ("3x3", "1x1"):
            raise ValueError(f"stride_on must be '3x3' (torchvision) or '1x1' (the paper), not {stride_on!r}")
        if shortcut not in SHORTCUTS:
            raise CnnlabError(f"shortcut must be one of {', '.join(SHORTCUTS)} (He et al. Sec. 3.3), not {shortcut!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise CnnlabError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        residual = shortcut != "none"
        probs = iter(linear_drop_probs(sum(counts), drop_path_rate if residual else 0.0))
        cin = 64
        for i, (n, planes) in enumerate(zip(counts, (64, 128, 256, 512))):
            stride = 1 if i == 0 else 2
            blocks = []
            for b in range(n):
                s = stride if b == 0 else 1
                cout = planes * block.expansion
                down = None
                changes = s != 1 or cin != cout
                if shortcut == "C" or shortcut == "B" and changes:
                    down = nn.Sequential(nn.Conv2d(cin, cout, 1, s, bias=False), nn.BatchNorm2d(cout))
                elif shortcut == "A" and changes:
                    down = ZeroPadShortcut(cout - cin, s)
                blocks.append(block(cin, planes, s, down, groups, width_per_group, stride_on, residual,
                                    next(probs)))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        init_he_normal(self, mode="fan_out")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.bn3.weight if isinstance(m, Bottleneck) else m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # N x 64 x 56 x 56
        x = self.layer1(x)  # N x 64 (256) x 56 x 56
        x = self.layer2(x)  # N x 128 (512) x 28 x 28
        x = self.layer3(x)  # N x 256 (1024) x 14 x 14
        x = self.layer4(x)  # N x 512 (2048) x 7 x 7
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _table1_flops(depth: int, billions: float) -> Figure:
    if depth in (18, 34):
        # The 18/34-layer rows match option A (zero-padding shortcuts, which add no multiply-adds), the one
        # Table 2 and Fig. 4 compare with the plain nets; projections would add 19M.
        return Figure("macs", billions * 1e9, f"He et al. 2016, Table 1 ({depth}-layer FLOPs)", 0.1e9,
                      "multiply-adds, with option A shortcuts", options={"shortcut": "A"})
    note = "the paper's 'FLOPs' are multiply-adds"
    if depth == 50:
        note += ("; ours, 3.86 G, rounds to 3.9: the printed 3.8 is 1.5% low (truncated, or counted without "
                 "part of the 51M-MAC first projection), while 101 and 152 layers round to the paper's figures")
    return Figure("macs", billions * 1e9, f"He et al. 2016, Table 1 ({depth}-layer FLOPs)", 0.1e9, note)


def _resnet(depth: int, groups: int, width_per_group: int, stride_on: str, num_classes: int = 1000,
            in_chans: int = 3, drop_path_rate: float = 0.0, zero_init_residual: bool = False,
            shortcut: str = "B") -> nn.Module:
    """The ``depth``-layer ResNet of Table 1 (ResNeXt with ``groups`` > 1, Wide ResNet with a wider group)."""
    return ResNet(depth, num_classes, in_chans, groups=groups, width_per_group=width_per_group, stride_on=stride_on,
                  shortcut=shortcut, drop_path_rate=drop_path_rate, zero_init_residual=zero_init_residual)


def _plain(depth: int, num_classes: int = 1000, in_chans: int = 3, drop_path_rate: float = 0.0,
           zero_init_residual: bool = False, shortcut: str = "none") -> nn.Module:
    """The ``depth``-layer plain baseline of Sec. 3.3: the ResNet's layers without shortcuts."""
    if shortcut != "none":
        raise CnnlabError(f"plain{depth} is the plain baseline: it has no shortcuts; use resnet{depth} for shortcuts")
    return ResNet(depth, num_classes, in_chans, shortcut=shortcut, drop_path_rate=drop_path_rate,
                  zero_init_residual=zero_init_residual)


def _variant(name: str, paper: Paper, summary: str, figures: tuple, depth: int, groups: int = 1,
             width_per_group: int = 64, stride_on: str = "3x3", plain: bool = False):
    """Register a row of Table 1 (or of ResNeXt's and Wide ResNet's tables) as model ``name``."""
    builder = partial(_plain, depth) if plain else partial(_resnet, depth, groups, width_per_group, stride_on)
    documented(builder, f"{summary}.\n\n{paper.citation}")
    return register_model(name=name, paper=paper, input_size=(3, 224, 224), summary=summary, figures=figures)(builder)


# He et al. 2016, Table 3: 10-crop top-5 error on ImageNet validation (option B shortcuts: projections
# only where the shape changes, as built here)
_TOP5_10CROP = {34: 7.46, 50: 6.71, 101: 6.05, 152: 5.71}


def _paper_figures(depth: int, billions: float) -> tuple[Figure, ...]:
    figs = [_table1_flops(depth, billions)]
    if depth in _TOP5_10CROP:
        figs.append(Figure("top5_err", _TOP5_10CROP[depth], f"He et al. 2016, Table 3 (ResNet-{depth} B, "
                           "10-crop, ImageNet val)", 0.01))
    return tuple(figs)


# Each: name, paper, summary, figures (torchvision's metadata, the papers' tables), then the architecture
resnet18 = _variant(
    "resnet18", PAPER, "ResNet-18 (basic blocks), torchvision-compatible",
    torchvision_figures("ResNet18_Weights", 11_689_512, 1.814, 69.758, 89.078) + (_table1_flops(18, 1.8),),
    depth=18)
resnet34 = _variant(
    "resnet34", PAPER, "ResNet-34 (basic blocks), torchvision-compatible",
    torchvision_figures("ResNet34_Weights", 21_797_672, 3.664, 73.314, 91.420) + _paper_figures(34, 3.6),
    depth=34)
resnet50 = _variant(
    "resnet50", PAPER, "ResNet-50 v1.5 (stride on the 3x3), torchvision-compatible",
    torchvision_figures("ResNet50_Weights", 25_557_032, 4.089, 76.130, 92.862), depth=50)
resnet101 = _variant(
    "resnet101", PAPER, "ResNet-101 v1.5 (stride on the 3x3), torchvision-compatible",
    torchvision_figures("ResNet101_Weights", 44_549_160, 7.801, 77.374, 93.546), depth=101)
resnet152 = _variant(
    "resnet152", PAPER, "ResNet-152 v1.5 (stride on the 3x3), torchvision-compatible",
    torchvision_figures("ResNet152_Weights", 60_192_808, 11.514, 78.312, 94.046), depth=152)
resnet50_paper = _variant(
    "resnet50_paper", PAPER, "ResNet-50 as published (stride on the first 1x1)",
    _paper_figures(50, 3.8), depth=50, stride_on="1x1")
resnet101_paper = _variant(
    "resnet101_paper", PAPER, "ResNet-101 as published (stride on the first 1x1)",
    _paper_figures(101, 7.6), depth=101, stride_on="1x1")
resnet152_paper = _variant(
    "resnet152_paper", PAPER, "ResNet-152 as published (stride on the first 1x1)",
    _paper_figures(152, 11.3), depth=152, stride_on="1x1")
resnext50_32x4d = _variant(
    "resnext50_32x4d", RESNEXT, "ResNeXt-50 32x4d (grouped 3x3), torchvision-compatible",
    torchvision_figures("ResNeXt50_32X4D_Weights", 25_028_904, 4.230, 77.618, 93.698)
    + (Figure("macs", 4.2e9, "Xie et al. 2017, Table 1 (ResNeXt-50 32x4d FLOPs)", 0.1e9),
       Figure("params", 25.0e6, "Xie et al. 2017, Table 1 (ResNeXt-50 32x4d)", 0.1e6)),
    depth=50, groups=32, width_per_group=4)
resnext101_32x8d = _variant(
    "resnext101_32x8d", RESNEXT, "ResNeXt-101 32x8d (grouped 3x3), torchvision-compatible",
    torchvision_figures("ResNeXt101_32X8D_Weights", 88_791_336, 16.414, 79.312, 94.526),
    depth=101, groups=32, width_per_group=8)
wide_resnet50_2 = _variant(
    "wide_resnet50_2", WIDE, "Wide ResNet-50-2 (bottleneck 3x3 twice as wide), torchvision-compatible",
    torchvision_figures("Wide_ResNet50_2_Weights", 68_883_240, 11.398, 78.468, 94.086),
    depth=50, width_per_group=128)
wide_resnet101_2 = _variant(
    "wide_resnet101_2", WIDE, "Wide ResNet-101-2 (bottleneck 3x3 twice as wide), torchvision-compatible",
    torchvision_figures("Wide_ResNet101_2_Weights", 126_886_696, 22.753, 78.848, 94.284),
    depth=101, width_per_group=128)
plain18 = _variant(
    "plain18", PAPER, "the paper's 18-layer plain baseline: ResNet-18 without shortcuts",
    (Figure("macs", 1.8e9, "He et al. 2016, Table 1 (18-layer FLOPs)", 0.1e9,
            "the paper's 'FLOPs' are multiply-adds"),),
    depth=18, plain=True)
plain34 = _variant(
    "plain34", PAPER, "the paper's 34-layer plain baseline: ResNet-34 without shortcuts",
    (Figure("macs", 3.6e9, "He et al. 2016, Sec. 3.3 (the 34-layer plain net has 3.6 billion FLOPs)", 0.1e9,
            "the paper's 'FLOPs' are multiply-adds"),
     Figure("top5_err", 10.02, "He et al. 2016, Table 3 (plain-34, 10-crop, ImageNet val)", 0.01)),
    depth=34, plain=True)
