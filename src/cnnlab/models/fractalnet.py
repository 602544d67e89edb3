"""FractalNet (Larsson, Maire & Shakhnarovich 2017, "FractalNet: ultra-deep neural networks without residuals",
ICLR; Sec. 2, Sec. 3 and Sec. 4).

A fractal block with C columns follows the expansion rule of Sec. 2,

    f_1(z) = conv(z),        f_{C+1}(z) = join(f_C(f_C(z)), conv(z)),

where conv is a 3x3 convolution, batch norm and ReLU, and join is the element-wise mean of its inputs. Column
c (0 = the shallowest) is a chain of 2^c conv units, so a block has 2^C - 1 of them and its longest path
2^(C-1). Written out (as in the paper's Fig. 1 and the authors' released code) the nested joins of the rule
are one join per depth: after depth d every column whose unit ends there is averaged in one join, and the
mean feeds all of them. The network is B = 5 blocks, each followed by 2x2 max-pooling (32 -> 1 on CIFAR),
then a linear classifier on the 512x1x1 map: depth B * 2^(C-1).

``CONFIGS`` is Sec. 4's CIFAR networks, filters (64, 128, 256, 512, 512) for blocks 1 to 5:

    fractalnet20  C=3, 20 layers       fractalnet40  C=4, 40 layers

Drop-path (Sec. 3) is on in training mode only, decided per mini-batch: with probability ``global_ratio``
(the paper: half the batches) a single column is chosen for the whole network ("global"); otherwise every
join drops each input with probability ``local_drop_prob`` (the paper: 0.15) and keeps at least one
("local"). ``dropout`` is one rate per block (the paper's "+dropout": 0, 0.1, 0.2, 0.3, 0.4). In eval mode
every path is used and the output is deterministic. ``column=c`` (an option, an attribute, or ``forward``'s
argument) runs column c of every block alone (-1: the deepest), as the paper's "deepest column alone" and
anytime experiments; the rest of the network is then not computed, and there is no drop-path.

Departures from the paper, and why:

* Parameter counts: ``fractalnet20`` has 33,724,618 parameters and ``fractalnet40`` 76,106,634 (10
  classes). The paper's Table 1 is reported to give 38.6M for the 20-layer network and 22.9M for the
  40-layer one; we could not read that table's text to verify it, so neither figure is on the cards. No
  choice of the stated widths reproduces them: C=4 at (64, 128, 256, 512, 512) cannot be 22.9M (block 5
  alone has 15 convolutions of 512x512x3x3 = 35.4M), so the 40-layer network of Table 1 must be narrower
  than these widths, in a way we found stated nowhere; and no bias or BN bookkeeping closes the 4.9M gap
  of the 20-layer one (an independent reimplementation, khanrc/pt.fractalnet, also counts 33.7M).
  ``widths`` lets you try other filters.
* The conv unit is Conv(bias=False)-BN-ReLU with an affine BN, the usual PyTorch reading of "conv, batch
  norm, ReLU". The authors' Caffe release uses biased convolutions and BN without learnable scale and shift
  (no Scale layer): one parameter per channel instead of two, 33,714,314 in all for the 20-layer network.
* Where dropout sits inside a unit the paper does not say; here it follows the authors' release:
  Conv-Dropout-BN-ReLU.
* Join then pool, as drawn in Fig. 1. The authors' release max-pools each column before the block's last
  join, which differs slightly (the max of a mean is not the mean of the maxes); it does not change
  parameters or the single-column networks.
* Local drop-path keeps one input chosen uniformly at random when every input of a join was dropped.
* An adaptive 1x1 max-pool sits before the classifier so inputs larger than 32x32 work; at 32x32 the map is
  already 1x1 and it is the identity.
* Initialisation is the authors' release's Caffe "xavier" filler, uniform in +-sqrt(3 / fan_in), for the
  convolutions and the linear layer, with zero biases.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.registry import Paper, documented, register_model

PAPER = Paper(
    title="FractalNet: Ultra-Deep Neural Networks without Residuals",
    authors="Gustav Larsson, Michael Maire, Gregory Shakhnarovich",
    year=2017,
    url="https://arxiv.org/abs/1605.07648",
)

WIDTHS = (64, 128, 256, 512, 512)  # Sec. 4: filters of blocks 1 to 5
PAPER_DROPOUT = (0.0, 0.1, 0.2, 0.3, 0.4)  # Sec. 4: per-block dropout of the "+dropout" networks

# name: number of columns C (B = 5 blocks of WIDTHS); depth = 5 * 2^(C-1)
CONFIGS: dict[str, int] = {"fractalnet20": 3, "fractalnet40": 4}


class ConvUnit(nn.Sequential):
    """3x3 conv - (dropout) - BN - ReLU, one box of the paper's Fig. 1."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
        super().__init__(*layers)


def join(inputs: list[torch.Tensor], keep: list[bool] | None = None) -> torch.Tensor:
    """Element-wise mean of the inputs that are kept (all of them when ``keep`` is None)."""
    kept = inputs if keep is None else [x for x, k in zip(inputs, keep) if k]
    out = kept[0]
    for x in kept[1:]:
        out = out + x
    return out / len(kept) if len(kept) > 1 else out


class FractalBlock(nn.Module):
    """f_C with its joins merged per depth; ``columns[c]`` is column c, 2^c conv units long."""

    def __init__(self, in_channels: int, out_channels: int, num_columns: int, dropout: float = 0.0):
        super().__init__()
        self.num_columns = num_columns
        self.columns = nn.ModuleList(
            nn.Sequential(*[ConvUnit(in_channels if i == 0 else out_channels, out_channels, dropout)
                            for i in range(2 ** c)])
            for c in range(num_columns)
        )

    @property
    def depth(self) -> int:
        return 2 ** (self.num_columns - 1)

    def arriving(self, d: int) -> list[int]:
        """Columns whose conv unit ends at depth d (1-based): column c's units span 2^(C-1-c) depths."""
        return [c for c in range(self.num_columns) if d % 2 ** (self.num_columns - 1 - c) == 0]

    def joins(self) -> list[list[int]]:
        """The columns merged by each join, in order (depths where only one column arrives have none)."""
        return [a for d in range(1, self.depth + 1) if len(a := self.arriving(d)) > 1]

    def forward(self, x: torch.Tensor, column: int | None = None, drop=None) -> torch.Tensor:
        """All columns joined, or only ``column``; ``drop(n)`` gives the keep-mask of an n-input join."""
        if column is not None:
            return self.columns[column](x)
        state = [x] * self.num_columns  # the current map of each column
        for d in range(1, self.depth + 1):
            arriving = self.arriving(d)
            for c in arriving:
                state[c] = self.columns[c][d // 2 ** (self.num_columns - 1 - c) - 1](state[c])
            if len(arriving) > 1:
                merged = join([state[c] for c in arriving], drop(len(arriving)) if drop else None)
                for c in arriving:
                    state[c] = merged
        return state[-1]


MAX_WIDTH = 4096  # filters per block: 4096 x 4096 x 3 x 3 is already 151M weights per convolution


class FractalNet(nn.Module):
    """B fractal blocks, each followed by 2x2 max-pooling, then a linear classifier."""

    def __init__(self, num_columns: int, widths: tuple[int, ...] = WIDTHS, num_classes: int = 10,
                 in_chans: int = 3, dropout: tuple[float, ...] | None = None, drop_path: bool = True,
                 local_drop_prob: float = 0.15, global_ratio: float = 0.5, column: int | None = None):
        super().__init__()
        widths = tuple(widths)
        if not 1 <= len(widths) <= 10 or not all(isinstance(w, int) and 1 <= w <= MAX_WIDTH for w in widths):
            raise CnnlabError(f"widths must be 1 to 10 block widths, each a whole number from 1 to {MAX_WIDTH}, "
                              f"e.g. widths={WIDTHS}; got {widths!r}")
        if isinstance(dropout, (int, float)):  # one rate for every block
            dropout = (dropout,) * len(widths)
        dropout = tuple(dropout) if dropout is not None else (0.0,) * len(widths)
        if len(dropout) != len(widths):
            raise CnnlabError(f"dropout needs one rate per block ({len(widths)}) or one for all, got {dropout}")
        if column is not None and (not isinstance(column, int) or not -num_columns <= column < num_columns):
            raise CnnlabError(f"column must be a column of the {num_columns} in each block: 0 to "
                              f"{num_columns - 1}, or -1 for the deepest; got {column!r}")
        self.num_columns = num_columns
        self.drop_path, self.local_drop_prob, self.global_ratio = drop_path, local_drop_prob, global_ratio
        self.column = column
        self.generator: torch.Generator | None = None  # CPU generator for drop-path draws; None: torch's global
        self.last_drop: str | int | None = None  # what the last training pass did: "local", a column, or None
        blocks, c = [], in_chans
        for w, p in zip(widths, dropout):
            blocks.append(FractalBlock(c, w, num_columns, p))
            c = w
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.final_pool = nn.AdaptiveMaxPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="linear")  # Caffe xavier: U(+-sqrt(3/fan_in))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def may_skip_parameters(self) -> bool:
        """Whether a training step may leave parameters unused: one column alone, or drop-path."""
        return self.column is not None or (self.drop_path and (self.global_ratio > 0 or self.local_drop_prob > 0))

    @property
    def depth(self) -> int:
        return len(self.blocks) * 2 ** (self.num_columns - 1)

    def _rand(self, *shape: int) -> torch.Tensor:
        # Drawn on the CPU so the decisions are plain Python values, whatever device the model is on.
        return torch.rand(shape, generator=self.generator, device="cpu")

    def _local_mask(self, n: int) -> list[bool]:
        keep = (self._rand(n) >= self.local_drop_prob).tolist()
        if not any(keep):
            keep[int(self._rand(1).item() * n) % n] = True
        return keep

    def forward(self, x: torch.Tensor, column: int | None = None) -> torch.Tensor:
        column = self.column if column is None else column
        drop = None
        self.last_drop = None
        if column is None and self.training and self.drop_path:
            if self._rand(1).item() < self.global_ratio:
                column = int(self._rand(1).item() * self.num_columns) % self.num_columns
                self.last_drop = column
            else:
                drop = self._local_mask
                self.last_drop = "local"
        if column is not None:
            column = range(self.num_columns)[column]  # negative indices count from the deepest
        for block in self.blocks:
            x = self.pool(block(x, column, drop))  # N x 64 x 16 x 16 after block 1, ..., N x 512 x 1 x 1
        x = self.final_pool(x)
        return self.classifier(torch.flatten(x, 1))


def _fractalnet(num_columns: int, num_classes: int = 10, in_chans: int = 3, drop_path: bool = True,
                local_drop_prob: float = 0.15, global_ratio: float = 0.5, dropout: tuple[float, ...] | None = None,
                column: int | None = None, widths: tuple[int, ...] = WIDTHS) -> nn.Module:
    """The CIFAR FractalNet of Sec. 4 with fractal blocks of ``num_columns`` columns."""
    return FractalNet(num_columns, widths, num_classes, in_chans, dropout, drop_path, local_drop_prob,
                      global_ratio, column)


def _variant(name: str, what: str):
    """Register the network ``name`` of ``CONFIGS``."""
    builder = documented(partial(_fractalnet, CONFIGS[name]), f"{what}.\n\n{PAPER.citation} (Sec. 4).")
    return register_model(name=name, paper=PAPER, input_size=(3, 32, 32), num_classes=10, summary=what)(builder)


fractalnet20 = _variant("fractalnet20", "FractalNet for CIFAR: 5 fractal blocks of C=3 columns, 20 layers deep, "
                        "drop-path")
fractalnet40 = _variant("fractalnet40", "FractalNet for CIFAR: 5 fractal blocks of C=4 columns, 40 layers deep, "
                        "drop-path")
