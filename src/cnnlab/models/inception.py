"""Inception-v3, Inception-v4 and Inception-ResNet-v2.

* ``inception_v3``: Szegedy, Vanhoucke, Ioffe, Shlens & Wojna 2016, "Rethinking the Inception Architecture
  for Computer Vision", CVPR (Table 1; Figs. 5, 6, 7 and 10 for the modules; Sec. 4 and Fig. 8 for the
  auxiliary classifier).
* ``inception_v4`` and ``inception_resnet_v2``: Szegedy, Ioffe, Vanhoucke & Alemi 2017, "Inception-v4,
  Inception-ResNet and the Impact of Residual Connections on Learning", AAAI (Figs. 3-9 for Inception-v4;
  Figs. 3, 7 and 15-19 and Table 1 for Inception-ResNet-v2; Sec. 3.3 for the residual scaling).

Every module is written as data. A layer is ``(what, out_channels)`` where ``what`` reads like the labels in
the papers' figures: ``"3x3"`` a same-padded 3x3 convolution, ``"1x7"`` a 1-high 7-wide one, ``"/2"`` stride
2, ``" V"`` valid (unpadded), ``"avg 3x3"`` / ``"max 3x3/2 V"`` pooling. Every convolution is conv (no bias)
+ BatchNorm (eps 0.001, TensorFlow's) + ReLU, the papers' "Conv". A module (:class:`Mixed`) is a tuple of
branches, each a tuple of layers run one after another; the branches' outputs are concatenated ("Filter
concat"). ``split(a, b)`` inside a branch runs ``a`` and ``b`` on the same input and concatenates them (the
"expanded filter bank" of Inception-v3 Fig. 7). Figures in the papers are drawn bottom to top; the tables
list branches left to right.

Inception-v3: departures from the paper, and why
-------------------------------------------------
``inception_v3`` is torchvision's ``inception_v3``: same module names, same state_dict keys in the same
order, same outputs (27,161,264 parameters with the auxiliary head, 23,834,568 without). torchvision ported
Google's released TensorFlow checkpoint, whose network is not quite the one of Table 1:

* Stem: after the first max-pool the release has a 1x1 convolution to 80 channels, a valid 3x3 to 192 and a
  3x3/2 max-pool (35x35x192); Table 1 lists three 3x3 convolutions there, ending at 35x35x288.
* Fig. 5 modules (``Mixed_5b``-``5d``) keep a 5x5 branch (1x1 48 -> 5x5 64) beside the two stacked 3x3s
  that Fig. 5 draws in place of the 5x5; pool projections are 32, 64, 64 channels, outputs 256, 288, 288.
* Four Fig. 6 modules (``Mixed_6b``-``6e``, n=7), where Table 1 says five.
* The grid reductions (``Mixed_6a``: 35 -> 17, ``Mixed_7a``: 17 -> 8) follow Fig. 10's idea, parallel
  stride-2 convolution and pooling branches concatenated; their widths (and ``Mixed_7a``'s 1x7/7x1 pair)
  come from the release, not a figure.
* Auxiliary head (Sec. 4, Fig. 8) on the last 17x17 grid: 5x5/3 average pool, 1x1 conv to 128, then a
  valid 5x5 conv to 768 (which reduces the 5x5 map to 1x1) and a linear layer, as released. Its
  convolutions are batch-normalised (Fig. 8); the paper's best model ("BN-auxiliary", Table 3) also
  batch-normalises the head's fully connected layer, the release does not. The head runs only in training
  mode, where the model returns ``InceptionOutputs(logits, aux_logits)`` (torchvision's); the trainer weights
  the aux loss 0.4, torchvision's reference recipe (the paper gives no weight). In eval mode the model
  returns the logits.
* The final 8x8 average pool is adaptive (torchvision's), so inputs from 75x75 up run; at 299x299 it is the
  paper's 8x8 pool. Dropout (p=0.5, torchvision's default; the TF-slim release keeps 0.8) sits before the
  classifier; Table 1 has none.
* The 3x3 average pools inside the modules count the zero padding at the borders (torchvision's
  ``avg_pool2d`` default); TensorFlow's "SAME" pooling, used to train the checkpoint, averages only real
  pixels. torchvision's ported weights carry this small border difference too.
* ``transform_input=True`` (torchvision's option) maps an ImageNet-normalised image to the [-1, 1] scaling
  the ported Google weights expect.
* Initialisation is torchvision's: truncated normal with std 0.1 (0.01 for the aux head's 5x5 conv, 0.001
  for its linear layer); the paper states none.
* Figures: torchvision's 27,161,264 parameters count the aux head (its weights carry one); its 5.713 GMACs
  are an eval-mode pass, without the head. The abstract's "5 billion multiply-adds" and "less than 25
  million parameters" describe the paper's network; the released one costs ~5.7 G multiply-adds (the extra
  5x5 branches and wider stem) and has 23.8 M parameters without the aux head.

Inception-v4: departures from the paper, and why
------------------------------------------------
The network is Fig. 9: the stem of Fig. 3 (35x35x384), 4 x Inception-A (Fig. 4), Reduction-A (Fig. 7, with
Table 1's k=192, l=224, m=256, n=384) to 17x17x1024, 7 x Inception-B (Fig. 5), Reduction-B (Fig. 8) to
8x8x1536, 3 x Inception-C (Fig. 6), 8x8 average pool, dropout (keep 0.8, i.e. p=0.2), linear. 42,679,816
parameters with 1000 classes, timm's count for ``inception_v4``.

* Kernel orders (1x7 before 7x1, and so on) are those drawn in the figures; the released TF-slim code
  (and timm's port of it) swaps some pairs, e.g. Fig. 3's 7x1 -> 1x7. Parameter counts are identical, but
  those checkpoints' 1x7/7x1 kernels are transposed relative to ours, and module names differ: this model
  does not load timm's weights.
* "Avg Pooling" in Figs. 4-6 is 3x3, stride 1, same padding, averaging only real pixels at the borders
  (``count_include_pad=False``): the TensorFlow "SAME" pooling of the authors' code. The paper gives no size.
* The 8x8 average pool is adaptive so other input sizes run; at 299x299 it is the paper's pool.
* No auxiliary head: Fig. 9 draws none and the paper does not describe one (the TF-slim release attaches one
  at the 17x17 grid for training; timm leaves it out too).
* BatchNorm has a learnable scale and offset (PyTorch's default, and timm's count); TF-slim's batch norm
  learns only the offset.
* Initialisation: He (Kaiming) normal for convolutions, the fan-in variance scaling the TF-slim code uses;
  the paper states none.

Inception-ResNet-v2: departures from the paper, and why
-------------------------------------------------------
The default model is the one the authors released (TF-slim ``inception_resnet_v2``, ported by timm; 55,843,464
parameters with 1000 classes), because the paper's figures for this network do not fit together: Fig. 15
puts the Fig. 3 stem (384 channels) under Inception-ResNet-A blocks whose 1x1 "Linear" convolution restores
384 channels (Fig. 16); Reduction-A with Table 1's k=256, l=256, m=384, n=384 then gives 384+384+384 = 1152
channels, but Fig. 17's Inception-ResNet-B block projects back to 1154; Reduction-B (Fig. 18) gives
1154+384+288+320 = 2146, but Fig. 19's Inception-ResNet-C projects to 2048. A residual sum needs both widths
equal, so these cannot be built as drawn. The release differs from the figures as follows:

* Stem: 3x3/2 V 32, 3x3 V 32, 3x3 64, 3x3/2 max-pool, 1x1 80, 3x3 V 192, 3x3/2 max-pool (35x35x192), then
  an Inception module ("Mixed_5b": 1x1 96 | 1x1 48 -> 5x5 64 | 1x1 64 -> 3x3 96 -> 3x3 96 | avg pool ->
  1x1 64) to 35x35x320, instead of Fig. 3 (35x35x384).
* Widths follow from the stem: Inception-ResNet-A projects to 320 (Fig. 16: 384), Reduction-A (Fig. 7,
  Table 1's k, l, m, n) outputs 320+384+384 = 1088, Inception-ResNet-B projects to 1088 (Fig. 17: 1154),
  Reduction-B (Fig. 18) outputs 1088+384+288+320 = 2080, Inception-ResNet-C projects to 2080 (Fig. 19:
  2048). The branches inside the blocks are those of Figs. 16-19.
* 10 / 20 / 10 blocks where Fig. 15 says 5 / 10 / 5. ``blocks=(5, 10, 5)`` builds the figure's counts
  (on the released widths).
* The last Inception-ResNet-C block has no ReLU after its sum and an unscaled residual (scale 1.0), and a
  1x1 conv (with BN and ReLU) to 1536 channels follows it; Fig. 15 has neither.
* Residual scaling (Sec. 3.3): the residual branch is multiplied by 0.17 (A), 0.10 (B), 0.20 (C) before the
  sum, the release's constants within the paper's 0.1-0.3. Each block's 1x1 "Linear" convolution has a bias
  and no BatchNorm: the paper puts BN on the traditional layers only, not on top of the summations (Sec. 3.2).
* Average pooling, the adaptive final pool, dropout (keep 0.8), BatchNorm and initialisation as for
  Inception-v4. No auxiliary head (Fig. 15 draws none; the release builds one for training).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.layers import InceptionOutputs, ResidualBlock, init_he_normal
from cnnlab.models.registry import Figure, Paper, register_model, torchvision_figures

RETHINKING = Paper(
    title="Rethinking the Inception Architecture for Computer Vision",
    authors="Christian Szegedy, Vincent Vanhoucke, Sergey Ioffe, Jonathon Shlens, Zbigniew Wojna",
    year=2016,
    url="https://arxiv.org/abs/1512.00567",
)
INCEPTION_V4 = Paper(
    title="Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning",
    authors="Christian Szegedy, Sergey Ioffe, Vincent Vanhoucke, Alexander A. Alemi",
    year=2017,
    url="https://arxiv.org/abs/1602.07261",
)


# -- building blocks ---------------------------------------------------------------------------------------
class ConvBNReLU(nn.Module):
    """The papers' "Conv": convolution without bias (BatchNorm's offset replaces it), BatchNorm, ReLU.
    Attribute names ``conv`` and ``bn`` are torchvision's ``BasicConv2d``'s."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chans, eps=0.001)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class Split(tuple):
    """Layers that read the same input; their outputs are concatenated."""


def split(*layers) -> Split:
    return Split(layers)


_WHAT = re.compile(r"^(?:(avg|max) )?(\d+)x(\d+)(?:/(\d+))?( V)?$")


def make_layer(in_chans: int, what: str, out_chans: int | None, pool_counts_padding: bool = False):
    """``("3x3/2 V", 96)`` -> (module, output channels). Same padding is k//2, which keeps the grid at stride
    1; every strided layer in these networks is valid-padded."""
    m = _WHAT.match(what)
    if m is None:
        raise ValueError(f"cannot read layer {what!r}; write e.g. '3x3', '1x7', '3x3/2 V', 'max 3x3/2 V'")
    pool, kh, kw, stride, valid = m.groups()
    kernel, stride = (int(kh), int(kw)), int(stride or 1)
    padding = (0, 0) if valid else (kernel[0] // 2, kernel[1] // 2)
    if pool == "max":
        return nn.MaxPool2d(kernel, stride, padding), in_chans
    if pool == "avg":
        return nn.AvgPool2d(kernel, stride, padding, count_include_pad=pool_counts_padding), in_chans
    return ConvBNReLU(in_chans, out_chans, kernel, stride, padding), out_chans


class Mixed(nn.Module):
    """An Inception module: parallel branches, concatenated along channels.

    ``branches`` is a tuple of branches; a branch is a tuple of layers ``(what, out)`` or ``(name, what, out)``
    and ``split(...)`` groups. Named layers keep their names (torchvision's, for Inception-v3); unnamed ones
    are called ``branch{i}_{j}`` (with ``a``, ``b`` for the members of a split).
    """

    def __init__(self, in_chans: int, branches: Sequence, pool_counts_padding: bool = False):
        super().__init__()
        self.paths: list[list] = []  # per branch, the module names in order; a tuple of names for a split
        self.out_channels = 0
        for i, branch in enumerate(branches):
            c, path = in_chans, []
            for j, step in enumerate(branch):
                members = step if isinstance(step, Split) else (step,)
                names, width = [], 0
                for k, layer in enumerate(members):
                    name, what, out = layer if len(layer) == 3 else (
                        f"branch{i}_{j}" + ("ab"[k] if isinstance(step, Split) else ""), *layer)
                    module, out = make_layer(c, what, out, pool_counts_padding)
                    self.add_module(name, module)
                    names.append(name)
                    width += out
                path.append(tuple(names) if isinstance(step, Split) else names[0])
                c = width
            self.paths.append(path)
            self.out_channels += c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for path in self.paths:
            y = x
            for step in path:
                if isinstance(step, tuple):
                    y = torch.cat([self._modules[name](y) for name in step], 1)
                else:
                    y = self._modules[step](y)
            outputs.append(y)
        return torch.cat(outputs, 1)


def build(in_chans: int, spec, pool_counts_padding: bool = False):
    """A layer ``(what, out)`` or a module (a tuple of branches) -> (module, output channels)."""
    if isinstance(spec[0], str):
        return make_layer(in_chans, *spec, pool_counts_padding)
    block = Mixed(in_chans, spec, pool_counts_padding)
    return block, block.out_channels


def sequential(in_chans: int, specs: Sequence) -> tuple[nn.Sequential, int]:
    layers = []
    for spec in specs:
        layer, in_chans = build(in_chans, spec)
        layers.append(layer)
    return nn.Sequential(*layers), in_chans


# -- Inception-v3 (torchvision's module tree) --------------------------------------------------------------
def fig5(pool_features: int) -> tuple:
    """35x35 module (torchvision ``InceptionA``): Fig. 5 plus the release's 5x5 branch."""
    return (
        (("branch1x1", "1x1", 64),),
        (("branch5x5_1", "1x1", 48), ("branch5x5_2", "5x5", 64)),
        (("branch3x3dbl_1", "1x1", 64), ("branch3x3dbl_2", "3x3", 96), ("branch3x3dbl_3", "3x3", 96)),
        (("pool", "avg 3x3", None), ("branch_pool", "1x1", pool_features)),
    )


def fig6(c7: int) -> tuple:
    """17x17 module with n=7 (torchvision ``InceptionC``); ``c7`` is the width inside the factorised 7x7s."""
    return (
        (("branch1x1", "1x1", 192),),
        (("branch7x7_1", "1x1", c7), ("branch7x7_2", "1x7", c7), ("branch7x7_3", "7x1", 192)),
        (("branch7x7dbl_1", "1x1", c7), ("branch7x7dbl_2", "7x1", c7), ("branch7x7dbl_3", "1x7", c7),
         ("branch7x7dbl_4", "7x1", c7), ("branch7x7dbl_5", "1x7", 192)),
        (("pool", "avg 3x3", None), ("branch_pool", "1x1", 192)),
    )


# 8x8 module with expanded filter bank outputs (torchvision ``InceptionE``).
FIG7 = (
    (("branch1x1", "1x1", 320),),
    (("branch3x3_1", "1x1", 384), split(("branch3x3_2a", "1x3", 384), ("branch3x3_2b", "3x1", 384))),
    (("branch3x3dbl_1", "1x1", 448), ("branch3x3dbl_2", "3x3", 384),
     split(("branch3x3dbl_3a", "1x3", 384), ("branch3x3dbl_3b", "3x1", 384))),
    (("pool", "avg 3x3", None), ("branch_pool", "1x1", 192)),
)
# Grid reductions in the manner of Fig. 10 (torchvision ``InceptionB`` and ``InceptionD``).
REDUCE_35_TO_17 = (
    (("branch3x3", "3x3/2 V", 384),),
    (("branch3x3dbl_1", "1x1", 64), ("branch3x3dbl_2", "3x3", 96), ("branch3x3dbl_3", "3x3/2 V", 96)),
    (("pool", "max 3x3/2 V", None),),
)
REDUCE_17_TO_8 = (
    (("branch3x3_1", "1x1", 192), ("branch3x3_2", "3x3/2 V", 320)),
    (("branch7x7x3_1", "1x1", 192), ("branch7x7x3_2", "1x7", 192), ("branch7x7x3_3", "7x1", 192),
     ("branch7x7x3_4", "3x3/2 V", 192)),
    (("pool", "max 3x3/2 V", None),),
)

# Table 1 as released; the comment is the output at 299x299.
V3_TRUNK = (
    ("Conv2d_1a_3x3", ("3x3/2 V", 32)),  # N x 32 x 149 x 149
    ("Conv2d_2a_3x3", ("3x3 V", 32)),  # N x 32 x 147 x 147
    ("Conv2d_2b_3x3", ("3x3", 64)),  # N x 64 x 147 x 147
    ("maxpool1", ("max 3x3/2 V", None)),  # N x 64 x 73 x 73
    ("Conv2d_3b_1x1", ("1x1", 80)),  # N x 80 x 73 x 73
    ("Conv2d_4a_3x3", ("3x3 V", 192)),  # N x 192 x 71 x 71
    ("maxpool2", ("max 3x3/2 V", None)),  # N x 192 x 35 x 35
    ("Mixed_5b", fig5(32)),  # N x 256 x 35 x 35
    ("Mixed_5c", fig5(64)),  # N x 288 x 35 x 35
    ("Mixed_5d", fig5(64)),  # N x 288 x 35 x 35
    ("Mixed_6a", REDUCE_35_TO_17),  # N x 768 x 17 x 17
    ("Mixed_6b", fig6(128)),  # N x 768 x 17 x 17
    ("Mixed_6c", fig6(160)),  # N x 768 x 17 x 17
    ("Mixed_6d", fig6(160)),  # N x 768 x 17 x 17
    ("Mixed_6e", fig6(192)),  # N x 768 x 17 x 17, read by the auxiliary head
    ("Mixed_7a", REDUCE_17_TO_8),  # N x 1280 x 8 x 8
    ("Mixed_7b", FIG7),  # N x 2048 x 8 x 8
    ("Mixed_7c", FIG7),  # N x 2048 x 8 x 8
)
V3_AUX_AFTER = "Mixed_6e"


class InceptionAux(nn.Module):
    """Auxiliary classifier on the last 17x17 grid (Sec. 4, Fig. 8), as released."""

    def __init__(self, in_chans: int, num_classes: int):
        super().__init__()
        self.pool = nn.AvgPool2d(5, stride=3)
        self.conv0 = ConvBNReLU(in_chans, 128, 1)
        self.conv1 = ConvBNReLU(128, 768, 5)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)  # N x 768 x 5 x 5
        x = self.conv0(x)  # N x 128 x 5 x 5
        x = self.conv1(x)  # N x 768 x 1 x 1
        x = self.avgpool(x)  # only does something on inputs larger than 299x299
        return self.fc(torch.flatten(x, 1))  # N x num_classes


class InceptionV3(nn.Module):
    """torchvision's ``Inception3`` module tree: ``Conv2d_1a_3x3`` ... ``Mixed_7c``, ``AuxLogits``, ``fc``."""

    # ImageNet mean and std, and the [-1, 1] scaling of Google's checkpoint: x' = (x * std + mean - 0.5) / 0.5
    _MEAN = (0.485, 0.456, 0.406)
    _STD = (0.229, 0.224, 0.225)

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, aux_logits: bool = True,
                 transform_input: bool = False, dropout: float = 0.5):
        super().__init__()
        if transform_input and in_chans != 3:
            raise CnnlabError(f"transform_input needs 3 input channels (RGB), not {in_chans}")
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        self.AuxLogits: InceptionAux | None = None
        c = in_chans
        for name, spec in V3_TRUNK:
            # torchvision's avg_pool2d counts the zero padding; we keep it for identical outputs
            layer, c = build(c, spec, pool_counts_padding=True)
            self.add_module(name, layer)
            if name == V3_AUX_AFTER and aux_logits:
                self.AuxLogits = InceptionAux(c, num_classes)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c, num_classes)

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.1, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.AuxLogits is not None:
            nn.init.trunc_normal_(self.AuxLogits.conv1.conv.weight, std=0.01, a=-2, b=2)
            nn.init.trunc_normal_(self.AuxLogits.fc.weight, std=0.001, a=-2, b=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor | InceptionOutputs:
        if self.transform_input:
            mean = torch.tensor(self._MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(self._STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = x * (std / 0.5) + (mean - 0.5) / 0.5
        aux = None
        for name, _ in V3_TRUNK:  # shapes in V3_TRUNK
            x = getattr(self, name)(x)
            if name == V3_AUX_AFTER and self.AuxLogits is not None and self.training:
                aux = self.AuxLogits(x)  # N x num_classes
        x = self.avgpool(x)  # N x 2048 x 1 x 1
        x = self.dropout(x)
        x = self.fc(torch.flatten(x, 1))  # N x num_classes
        if aux is not None:
            return InceptionOutputs(x, aux)
        return x


# -- Inception-v4 --------------------------------------------------------------------------------------------
# Fig. 3; the comment is the output at 299x299 (the paper's H x W x C, written C x H x W).
STEM = (
    ("3x3/2 V", 32),  # 32 x 149 x 149
    ("3x3 V", 32),  # 32 x 147 x 147
    ("3x3", 64),  # 64 x 147 x 147
    ((("max 3x3/2 V", None),), (("3x3/2 V", 96),)),  # 160 x 73 x 73
    ((("1x1", 64), ("3x3 V", 96)),
     (("1x1", 64), ("7x1", 64), ("1x7", 64), ("3x3 V", 96))),  # 192 x 71 x 71
    ((("3x3/2 V", 192),), (("max 3x3/2 V", None),)),  # 384 x 35 x 35
)
INCEPTION_A = (  # Fig. 4: 384 -> 96 + 96 + 96 + 96 = 384 on the 35x35 grid
    (("avg 3x3", None), ("1x1", 96)),
    (("1x1", 96),),
    (("1x1", 64), ("3x3", 96)),
    (("1x1", 64), ("3x3", 96), ("3x3", 96)),
)
INCEPTION_B = (  # Fig. 5: 1024 -> 128 + 384 + 256 + 256 = 1024 on the 17x17 grid
    (("avg 3x3", None), ("1x1", 128)),
    (("1x1", 384),),
    (("1x1", 192), ("1x7", 224), ("7x1", 256)),
    (("1x1", 192), ("1x7", 192), ("7x1", 224), ("1x7", 224), ("7x1", 256)),
)
INCEPTION_C = (  # Fig. 6: 1536 -> 256 + 256 + 512 + 512 = 1536 on the 8x8 grid
    (("avg 3x3", None), ("1x1", 256)),
    (("1x1", 256),),
    (("1x1", 384), split(("1x3", 256), ("3x1", 256))),
    (("1x1", 384), ("1x3", 448), ("3x1", 512), split(("1x3", 256), ("3x1", 256))),
)
REDUCTION_B = (  # Fig. 8: 17x17x1024 -> 8x8x(1024 + 192 + 320) = 8x8x1536
    (("max 3x3/2 V", None),),
    (("1x1", 192), ("3x3/2 V", 192)),
    (("1x1", 256), ("1x7", 256), ("7x1", 320), ("3x3/2 V", 320)),
)
# Table 1: the filter counts k, l, m, n of Reduction-A in each network.
REDUCTION_A_KLMN = {"inception_v4": (192, 224, 256, 384), "inception_resnet_v2": (256, 256, 384, 384)}


def reduction_a(k: int, l: int, m: int, n: int) -> tuple:
    """Fig. 7: 35x35 -> 17x17, output channels = input + n + m."""
    return (
        (("max 3x3/2 V", None),),
        (("3x3/2 V", n),),
        (("1x1", k), ("3x3", l), ("3x3/2 V", m)),
    )


def _stage(in_chans: int, block: tuple, n: int) -> nn.Sequential:
    return nn.Sequential(*(Mixed(in_chans, block) for _ in range(n)))


class InceptionV4(nn.Module):
    """Fig. 9: stem, 4 x A, Reduction-A, 7 x B, Reduction-B, 3 x C, average pool, dropout, linear."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.2):
        super().__init__()
        self.stem, c = sequential(in_chans, STEM)
        self.inception_a = _stage(c, INCEPTION_A, 4)
        self.reduction_a = Mixed(c, reduction_a(*REDUCTION_A_KLMN["inception_v4"]))
        c = self.reduction_a.out_channels
        self.inception_b = _stage(c, INCEPTION_B, 7)
        self.reduction_b = Mixed(c, REDUCTION_B)
        c = self.reduction_b.out_channels
        self.inception_c = _stage(c, INCEPTION_C, 3)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c, num_classes)
        init_he_normal(self, mode="fan_in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # N x 384 x 35 x 35
        x = self.inception_a(x)  # N x 384 x 35 x 35
        x = self.reduction_a(x)  # N x 1024 x 17 x 17
        x = self.inception_b(x)  # N x 1024 x 17 x 17
        x = self.reduction_b(x)  # N x 1536 x 8 x 8
        x = self.inception_c(x)  # N x 1536 x 8 x 8
        x = self.dropout(torch.flatten(self.avgpool(x), 1))  # N x 1536
        return self.fc(x)  # N x num_classes


# -- Inception-ResNet-v2 --------------------------------------------------------------------------------------
RESNET_V2_STEM = (  # the released stem (see the module docstring); outputs at 299x299
    ("3x3/2 V", 32),  # 32 x 149 x 149
    ("3x3 V", 32),  # 32 x 147 x 147
    ("3x3", 64),  # 64 x 147 x 147
    ("max 3x3/2 V", None),  # 64 x 73 x 73
    ("1x1", 80),  # 80 x 73 x 73
    ("3x3 V", 192),  # 192 x 71 x 71
    ("max 3x3/2 V", None),  # 192 x 35 x 35
    ((("1x1", 96),),
     (("1x1", 48), ("5x5", 64)),
     (("1x1", 64), ("3x3", 96), ("3x3", 96)),
     (("avg 3x3", None), ("1x1", 64))),  # 320 x 35 x 35 ("Mixed_5b")
)
# The residual branches of Figs. 16, 17, 19; each block ends in a 1x1 "Linear" conv back to its input width.
RESNET_A = (  # Fig. 16, 35x35 grid
    (("1x1", 32),),
    (("1x1", 32), ("3x3", 32)),
    (("1x1", 32), ("3x3", 48), ("3x3", 64)),
)
RESNET_B = (  # Fig. 17, 17x17 grid
    (("1x1", 192),),
    (("1x1", 128), ("1x7", 160), ("7x1", 192)),
)
RESNET_C = (  # Fig. 19, 8x8 grid
    (("1x1", 192),),
    (("1x1", 192), ("1x3", 224), ("3x1", 256)),
)
RESNET_V2_REDUCTION_B = (  # Fig. 18: 17x17x1088 -> 8x8x(1088 + 384 + 288 + 320) = 8x8x2080
    (("max 3x3/2 V", None),),
    (("1x1", 256), ("3x3/2 V", 384)),
    (("1x1", 256), ("3x3/2 V", 288)),
    (("1x1", 256), ("3x3", 288), ("3x3/2 V", 320)),
)
RESNET_SCALES = (0.17, 0.10, 0.20)  # Sec. 3.3: residuals scaled by 0.1-0.3; the release's values per stage


class InceptionResNetBlock(ResidualBlock):
    """x -> ReLU(x + scale * up(branches(x))). ``up`` is the "1x1 Conv (Linear)": bias, no BN, no ReLU."""

    def __init__(self, channels: int, branches: tuple, scale: float, relu: bool = True):
        super().__init__()
        self.branches = Mixed(channels, branches)
        self.up = nn.Conv2d(self.branches.out_channels, channels, 1)
        self.scale = scale
        self.relu = nn.ReLU(inplace=True) if relu else nn.Identity()

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.branches(x))

    def post(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class InceptionResNetV2(nn.Module):
    """The released Inception-ResNet-v2: stem to 320, A blocks, Reduction-A, B blocks, Reduction-B, C blocks
    (the last without ReLU), 1x1 conv to 1536, average pool, dropout, linear."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, blocks: Sequence[int] = (10, 20, 10),
                 dropout: float = 0.2):
        super().__init__()
        blocks = tuple(blocks)
        if len(blocks) != 3 or not all(isinstance(b, int) and 1 <= b <= 100 for b in blocks):
            raise CnnlabError(f"blocks must be three whole numbers from 1 to 100 (A, B, C), e.g. blocks=(5, 10, 5); "
                              f"got {blocks!r}")
        a, b, c_blocks = blocks
        sa, sb, sc = RESNET_SCALES
        self.stem, c = sequential(in_chans, RESNET_V2_STEM)
        self.inception_resnet_a = nn.Sequential(*(InceptionResNetBlock(c, RESNET_A, sa) for _ in range(a)))
        self.reduction_a = Mixed(c, reduction_a(*REDUCTION_A_KLMN["inception_resnet_v2"]))
        c = self.reduction_a.out_channels
        self.inception_resnet_b = nn.Sequential(*(InceptionResNetBlock(c, RESNET_B, sb) for _ in range(b)))
        self.reduction_b = Mixed(c, RESNET_V2_REDUCTION_B)
        c = self.reduction_b.out_channels
        self.inception_resnet_c = nn.Sequential(
            *(InceptionResNetBlock(c, RESNET_C, sc) for _ in range(c_blocks - 1)),
            InceptionResNetBlock(c, RESNET_C, 1.0, relu=False),  # as released: no ReLU, unscaled
        )
        self.conv = ConvBNReLU(c, 1536, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1536, num_classes)
        init_he_normal(self, mode="fan_in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # N x 320 x 35 x 35
        x = self.inception_resnet_a(x)  # N x 320 x 35 x 35
        x = self.reduction_a(x)  # N x 1088 x 17 x 17
        x = self.inception_resnet_b(x)  # N x 1088 x 17 x 17
        x = self.reduction_b(x)  # N x 2080 x 8 x 8
        x = self.inception_resnet_c(x)  # N x 2080 x 8 x 8
        x = self.conv(x)  # N x 1536 x 8 x 8
        x = self.dropout(torch.flatten(self.avgpool(x), 1))  # N x 1536
        return self.fc(x)  # N x num_classes


# -- registry ------------------------------------------------------------------------------------------------
_TABLE2 = "Szegedy et al. 2017, Table 2"
_TABLE2_NOTE = "ILSVRC 2012 val (non-blacklisted subset), single crop, single model"


@register_model(
    paper=RETHINKING, input_size=(3, 299, 299),
    summary="Inception-v3: factorised convolutions, grid reductions, BN auxiliary head (torchvision's tree)",
    figures=(
        *torchvision_figures("Inception_V3_Weights", 27_161_264, 5.713, 77.294, 93.450,
                             params_note="counts the auxiliary head, which the weights carry",
                             macs_note="eval-mode pass, without the auxiliary head"),
        Figure("macs", 5e9, "Szegedy et al. 2016, abstract: 5 billion multiply-adds per inference", 1e9,
               "the paper's network; the released one adds 5x5 branches"),
        Figure("top1_err", 21.2, "Szegedy et al. 2016, abstract", 0.1,
               "ILSVRC 2012 val, single crop"),
        Figure("top5_err", 5.6, "Szegedy et al. 2016, abstract", 0.1,
               "ILSVRC 2012 val, single crop"),
    ),
)
def inception_v3(num_classes: int = 1000, in_chans: int = 3, aux_logits: bool = True,
                 transform_input: bool = False, dropout: float = 0.5) -> nn.Module:
    """Inception-v3 of Szegedy et al. (2016), "Rethinking the Inception architecture", as torchvision builds it."""
    return InceptionV3(num_classes, in_chans, aux_logits, transform_input, dropout)


@register_model(
    paper=INCEPTION_V4, input_size=(3, 299, 299),
    summary="Inception-v4: Fig. 3 stem, 4/7/3 Inception-A/B/C blocks with Reduction-A/B, no auxiliary head",
    figures=(
        Figure("params", 42_679_816, "timm inception_v4 parameter count", note="1000 classes, affine BN"),
        Figure("top1_err", 20.0, _TABLE2, 0.1, _TABLE2_NOTE),
        Figure("top5_err", 5.0, _TABLE2, 0.1, _TABLE2_NOTE),
    ),
)
def inception_v4(num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.2) -> nn.Module:
    """Inception-v4 of Szegedy et al. (2017), "Inception-v4, Inception-ResNet and ...", Fig. 9."""
    return InceptionV4(num_classes, in_chans, dropout)


@register_model(
    paper=INCEPTION_V4, input_size=(3, 299, 299),
    summary="Inception-ResNet-v2 as released (TF-slim): scaled residual Inception blocks 10/20/10",
    figures=(
        Figure("params", 55_843_464, "timm inception_resnet_v2 parameter count",
               note="1000 classes, affine BN; the released TF-slim network"),
        Figure("top1_err", 19.9, _TABLE2, 0.1, _TABLE2_NOTE),
        Figure("top5_err", 4.9, _TABLE2, 0.1, _TABLE2_NOTE),
    ),
)
def inception_resnet_v2(num_classes: int = 1000, in_chans: int = 3, blocks: Sequence[int] = (10, 20, 10),
                        dropout: float = 0.2) -> nn.Module:
    """Inception-ResNet-v2 of Szegedy et al. (2017), as released in TF-slim."""
    return InceptionResNetV2(num_classes, in_chans, blocks, dropout)
