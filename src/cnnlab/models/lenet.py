"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998, "Gradient-based learning applied to document
recognition", Proc. IEEE 86(11), Sec. II.B and Fig. 2) and the lecture's modern PyTorch version.

``lenet5`` is the network of the paper, layer for layer:

    INPUT 1@32x32 -> C1 6@28x28 (5x5 conv) -> S2 6@14x14 (trainable subsampling)
    -> C3 16@10x10 (5x5 conv, partial connections of Table I) -> S4 16@5x5
    -> C5 120 (5x5 conv on a 5x5 map) -> F6 84 -> OUTPUT 10 (Euclidean RBF units)

with the squashing function f(a) = 1.7159 tanh(2a/3) after every layer up to F6 and 60,000 trainable
parameters, as the paper states. Where this code departs from the paper, and why:

* S2/S4 average the 2x2 inputs, then multiply by a trainable coefficient and add a trainable bias, per map.
  The paper adds the four inputs; an average is the same family of functions (the coefficient absorbs the
  factor 4) and keeps activations in the same range as the input. Initialisation is scaled to match.
* The RBF output units compute y_i = sum_j (x_j - w_ij)^2 with fixed prototypes w_i in {-1, +1}^84, as in
  the paper; the network returns **-y** so that argmax picks the closest prototype and ordinary
  cross-entropy on -y is the paper's MAP criterion (eq. 9) without its constant "rubbish" class.
* The paper draws each prototype as a 7x12 bitmap of a stylised digit (Fig. 3) but does not print the
  bitmaps. ``DIGIT_BITMAPS`` below are our own 7-wide, 12-tall drawings of 0-9 in that spirit ("X" = +1,
  "." = -1); any reasonably separated +/-1 codes serve the same purpose. For ``num_classes != 10`` the
  prototypes are random +/-1 codes from a fixed seed, so they are the same in every run.
* ``head="linear"`` replaces the RBF layer by a plain linear layer (84 x num_classes + biases), the usual
  choice today. The default is the paper's RBF head because the name promises the published network
  (and its 60,000 trainable parameters); the linear head adds 850 trainable parameters for 10 classes.
* C3's partial connections are stored as 1,500 weights and computed as one dense convolution with zeros
  for the missing connections (four times faster on CPUs than grouped convolutions); the inspector
  therefore counts the 240,000 multiply-adds that run, of which the paper's connections are 150,000.
* Weights start uniform in (-2.4/F, 2.4/F), F the fan-in of the unit (App. C). Training details of the
  paper (stochastic diagonal Levenberg-Marquardt) belong to the trainer, not the architecture.

``lenet5_modern`` is the lecture's version: conv 6 and 16 (5x5) with ReLU and 2x2 max-pooling, then fully
connected 120 and 84 with tanh and a linear output: 61,706 parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.layers import _TEXTBOOK, FullConv2d, ScaledTanh
from cnnlab.models.registry import Figure, Paper, register_model

PAPER = Paper(
    title="Gradient-based learning applied to document recognition",
    authors="Yann LeCun, Léon Bottou, Yoshua Bengio, Patrick Haffner",
    year=1998,
    url="https://doi.org/10.1109/5.726791",
)

# Table I of the paper: row i is S2 feature map i, column j is C3 feature map j; "X" marks a connection.
C3_TABLE = (
    "X...XXX..XXXX.XX",
    "XX...XXX..XXXX.X",
    "XXX...XXX..X.XXX",
    ".XXX..XXXX..X.XX",
    "..XXX..XXXX.XX.X",
    "...XXX..XXXX.XXX",
)

DIGIT_BITMAPS = {
    0: (".XXXXX.", "XX...XX", "X.....X", "X.....X", "X.....X", "X.....X",
        "X.....X", "X.....X", "X.....X", "X.....X", "XX...XX", ".XXXXX."),
    1: ("...X...", "..XX...", ".X.X...", "...X...", "...X...", "...X...",
        "...X...", "...X...", "...X...", "...X...", "...X...", ".XXXXX."),
    2: (".XXXXX.", "X.....X", "......X", "......X", ".....X.", "....X..",
        "...X...", "..X....", ".X.....", "X......", "X......", "XXXXXXX"),
    3: (".XXXXX.", "X.....X", "......X", "......X", "......X", "..XXXX.",
        "......X", "......X", "......X", "......X", "X.....X", ".XXXXX."),
    4: ("....XX.", "...X.X.", "..X..X.", ".X...X.", "X....X.", "X....X.",
        "XXXXXXX", ".....X.", ".....X.", ".....X.", ".....X.", ".....X."),
    5: ("XXXXXXX", "X......", "X......", "X......", "XXXXXX.", "......X",
        "......X", "......X", "......X", "......X", "X.....X", ".XXXXX."),
    6: ("..XXXX.", ".X.....", "X......", "X......", "X......", "XXXXXX.",
        "X.....X", "X.....X", "X.....X", "X.....X", "X.....X", ".XXXXX."),
    7: ("XXXXXXX", "......X", "......X", ".....X.", ".....X.", "....X..",
        "....X..", "...X...", "...X...", "..X....", "..X....", "..X...."),
    8: (".XXXXX.", "X.....X", "X.....X", "X.....X", "X.....X", ".XXXXX.",
        "X.....X", "X.....X", "X.....X", "X.....X", "X.....X", ".XXXXX."),
    9: (".XXXXX.", "X.....X", "X.....X", "X.....X", "X.....X", "X.....X",
        ".XXXXXX", "......X", "......X", "......X", ".....X.", ".XXXX.."),
}


def connection_table(rows=C3_TABLE) -> list[list[int]]:
    """For each output map, the input maps it reads (from a table of "X" and ".")."""
    return [[i for i, row in enumerate(rows) if row[j] == "X"] for j in range(len(rows[0]))]


def rbf_prototypes(num_classes: int = 10) -> torch.Tensor:
    """The fixed +/-1 prototypes of the output layer, one 84-vector (a 7x12 bitmap) per class."""
    if num_classes == 10:
        rows = [[1.0 if ch == "X" else -1.0 for line in DIGIT_BITMAPS[d] for ch in line] for d in range(10)]
        return torch.tensor(rows)
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 2, (num_classes, 84), generator=g, device="cpu").float() * 2 - 1
    return codes.to(torch.get_default_device())


def _lecun_uniform_(tensor: torch.Tensor, fan_in: int) -> None:
    bound = 2.4 / fan_in
    nn.init.uniform_(tensor, -bound, bound)


class Subsampling(nn.Module):
    """S2/S4: average of each 2x2 block, times a trainable coefficient plus a trainable bias, per map.

    On a CPU, for fp32 (or fp64) channels-last input (the trainer's default there), computed as one
    depthwise 2x2 stride-2 convolution whose four taps are coefficient / 4 (the same numbers), which is faster
    than average pooling, a multiply and an add there; in NCHW and in bf16 it was slower, so those (and GPUs,
    not measured) keep the pooling (timings: docs/benchmarks.md, "Time to 99.0%"). Inside
    ``textbook_ops()`` it always runs as pooling, so the inspector shows the layer as the paper describes it
    (no multiply-adds counted, as for any pooling layer)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels))
        self.bias = nn.Parameter(torch.empty(channels))
        # The paper's coefficient on the *sum* starts in +/-2.4/4; on the average that is +/-2.4.
        nn.init.uniform_(self.weight, -2.4, 2.4)
        _lecun_uniform_(self.bias, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (_TEXTBOOK[0] or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64)
                or not x.is_contiguous(memory_format=torch.channels_last)):
            return F.avg_pool2d(x, 2) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        taps = (self.weight / 4).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
        return F.conv2d(x, taps, self.bias, stride=2, groups=self.weight.shape[0])


class PartialConv2d(nn.Module):
    """A convolution in which output map j sees only the input maps ``table[j]`` (LeNet-5's C3).

    Only the published connections are parameters (for C3: 60 kernels of 5x5 = 1,500 weights, plus 16
    biases). Each forward pass scatters them into a full (out, in, k, k) weight with zeros elsewhere and
    runs one dense convolution: on CPUs that is about four times faster, forward and backward, than
    grouped convolutions over gathered inputs, at the price of multiply-adds on the fixed zeros (C3 runs
    240,000 multiply-adds of which 150,000 are the paper's connections).
    """

    def __init__(self, table: list[list[int]], kernel_size: int):
        super().__init__()
        self.table = [list(t) for t in table]
        self.out_channels = len(table)
        self.in_channels = 1 + max(max(t) for t in table)
        self.kernel_size = kernel_size
        outs = [j for j, t in enumerate(table) for _ in t]
        ins = [i for t in table for i in t]
        self.register_buffer("out_index", torch.tensor(outs), persistent=False)
        self.register_buffer("in_index", torch.tensor(ins), persistent=False)
        # U(-2.4/F, 2.4/F) with F the fan-in of the output map a kernel feeds (its inputs x k x k)
        bound = torch.tensor([2.4 / (len(table[o]) * kernel_size ** 2) for o in outs]).view(-1, 1, 1)
        self.weight = nn.Parameter((torch.rand(len(ins), kernel_size, kernel_size) * 2 - 1) * bound)
        self.bias = nn.Parameter(torch.empty(self.out_channels))
        _lecun_uniform_(self.bias, len(ins) // self.out_channels * kernel_size ** 2)

    @property
    def connections(self) -> int:
        return self.weight.shape[0]

    def dense_weight(self) -> torch.Tensor:
        """The equivalent full (out, in, k, k) weight, zero where the table has no connection."""
        k = self.kernel_size
        dense = self.weight.new_zeros(self.out_channels, self.in_channels, k, k)
        return dense.index_put((self.out_index, self.in_index), self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dense_weight(), self.bias)


class EuclideanRBF(nn.Module):
    """Output units y_i = ||x - w_i||^2 with fixed prototypes w_i; returns -y (larger = closer)."""

    def __init__(self, prototypes: torch.Tensor):
        super().__init__()
        self.register_buffer("prototypes", prototypes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ||x||^2 - 2 x.w + ||w||^2, written with a matrix product so the 84 x classes multiply-adds count.
        p = self.prototypes
        sq = (x * x).sum(1, keepdim=True) - 2 * x @ p.t() + (p * p).sum(1)
        return -sq


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 1, head: str = "rbf"):
        super().__init__()
        if head not in ("rbf", "linear"):
            raise CnnlabError(f"head must be 'rbf' (the paper's) or 'linear', got {head!r}")
        self.c1 = nn.Conv2d(in_chans, 6, 5)
        self.s2 = Subsampling(6)
        self.c3 = PartialConv2d(connection_table(), 5)
        self.s4 = Subsampling(16)
        self.c5 = FullConv2d(16, 120, 5)
        self.f6 = nn.Linear(120, 84)
        self.act = ScaledTanh()
        self.output = EuclideanRBF(rbf_prototypes(num_classes)) if head == "rbf" else nn.Linear(84, num_classes)
        for layer in (self.c1, self.c5, self.f6) + ((self.output,) if head == "linear" else ()):
            fan_in = layer.weight[0].numel()
            _lecun_uniform_(layer.weight, fan_in)
            _lecun_uniform_(layer.bias, fan_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.c1(x))  # N x 6 x 28 x 28
        x = self.act(self.s2(x))  # N x 6 x 14 x 14
        x = self.act(self.c3(x))  # N x 16 x 10 x 10
        x = self.act(self.s4(x))  # N x 16 x 5 x 5
        x = self.act(self.c5(x))  # N x 120 x 1 x 1
        x = torch.flatten(x, 1)
        x = self.act(self.f6(x))  # N x 84
        return self.output(x)  # N x num_classes


class LeNet5Modern(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5), nn.ReLU(), nn.MaxPool2d(2),  # N x 6 x 14 x 14
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),  # N x 16 x 5 x 5
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


MNIST_NOTE = "MNIST test set, 28x28 digits padded to 32x32"


@register_model(
    paper=PAPER, input_size=(1, 32, 32), num_classes=10,
    summary="LeNet-5 as published: trainable subsampling, partial C3, scaled tanh, RBF output",
    figures=(
        Figure("params", 60_000, "LeCun et al. 1998: 60,000 trainable free parameters"),
        Figure("test_err", 0.95, "LeCun et al. 1998, Sec. III.C: LeNet-5 without distortions", 0.01,
               MNIST_NOTE, dataset="mnist"),
    ),
)
def lenet5(num_classes: int = 10, in_chans: int = 1, head: str = "rbf") -> nn.Module:
    """LeNet-5 as published by LeCun, Bottou, Bengio & Haffner (1998), Sec. II.B and Appendix A."""
    return LeNet5(num_classes, in_chans, head)


@register_model(
    paper=PAPER, input_size=(1, 32, 32), num_classes=10,
    summary="the lecture's LeNet-5: ReLU + max-pool convs, tanh FC layers, linear output",
    figures=(Figure("params", 61_706, "lecture: PyTorch LeNet-5 (conv 6, 16; fc 120, 84, 10)"),),
)
def lenet5_modern(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    """The lecture's LeNet-5 (ReLU, max-pooling), after LeCun et al. (1998)."""
    return LeNet5Modern(num_classes, in_chans)
