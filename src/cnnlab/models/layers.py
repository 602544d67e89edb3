"""Layers shared by several families."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class LocalResponseNorm(nn.Module):
    """Local response normalisation as written in Krizhevsky et al. 2012, Sec. 3.3:

        b[i] = a[i] / (k + alpha * sum_{j=i-n/2}^{i+n/2} a[j]^2) ^ beta

    PyTorch's ``nn.LocalResponseNorm`` divides ``alpha`` by ``n`` first; this layer takes the paper's
    ``alpha`` and converts, so ``alpha=1e-4`` here is the paper's 1e-4. ``groups`` normalises each group
    of channels on its own: AlexNet's two GPUs each normalised only the maps they held.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0, groups: int = 1):
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.groups = size, alpha, beta, k, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.groups > 1:
            x = x.reshape(n * self.groups, c // self.groups, h, w)
        y = F.local_response_norm(x, self.size, alpha=self.alpha * self.size, beta=self.beta, k=self.k)
        return y.reshape(n, c, h, w)

    def extra_repr(self) -> str:
        groups = f", groups={self.groups}" if self.groups > 1 else ""
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}{groups}"


class ScaledTanh(nn.Module):
    """LeCun's squashing function f(a) = A tanh(S a) with A = 1.7159, S = 2/3 (LeCun et al. 1998, App. A),
    chosen so that f(1) = 1 and f(-1) = -1."""

    A = 1.7159
    S = 2.0 / 3.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ScaledTanhFn.apply(x)


class _ScaledTanhFn(torch.autograd.Function):
    """A tanh(S x), computed as 2A sigmoid(2S x) - A (the same function: tanh(u) = 2 sigmoid(2u) - 1), with a
    hand-written backward A S (1 - t^2) g = 4AS s (1 - s) g, s = sigmoid(2S x).

    Why: PyTorch's CPU tanh is several times slower than its sigmoid, and the scaled tanh after C1 was the
    largest single cost of a LeNet-5 training step (timings: docs/benchmarks.md, "Time to 99.0%"). The values
    differ from ``A * torch.tanh(S * x)`` by at most 5e-7 (fp32 rounding; tanh's own is 2e-7). Autograd's
    graph of the formula would also run three elementwise passes back; this runs two (sigmoid_backward, one
    scale). When a graph of the backward is asked for (double backward), s is
    recomputed from x so that the graph reaches x."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(x * (2 * ScaledTanh.S))
        ctx.save_for_backward(x, s)
        return (s * (2 * ScaledTanh.A)).sub_(ScaledTanh.A)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        x, s = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: s as a function of x
            s = torch.sigmoid(x * (2 * ScaledTanh.S))
        return torch.ops.aten.sigmoid_backward(grad, s) * (4 * ScaledTanh.A * ScaledTanh.S)


_TEXTBOOK = [0]  # > 0 while textbook_ops() is active


@contextmanager
def textbook_ops() -> Iterator[None]:
    """Within this block, layers with a faster equivalent computation (``FullConv2d``) run the operation
    they stand for instead, so that an inspector tracing the operations sees a convolution as a convolution
    (its receptive field and stride). The numbers are the same either way."""
    _TEXTBOOK[0] += 1
    try:
        yield
    finally:
        _TEXTBOOK[0] -= 1


class FullConv2d(nn.Conv2d):
    """A convolution whose kernel covers its whole input, like LeNet-5's C5 (5x5 kernels on 5x5 maps).

    LeCun et al. call C5 convolutional rather than fully connected "because if LeNet-5 input were made
    bigger with everything else kept constant, the feature map dimension would be larger than 1x1". On an
    input the size of the kernel it is a matrix product, and it is computed as one: about ten times faster
    on a CPU than the general convolution routine, forward and backward. On a larger input (or inside
    ``textbook_ops()``) it runs as an ordinary convolution. Same parameters, state_dict keys and output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not _TEXTBOOK[0] and x.dim() == 4 and tuple(x.shape[-2:]) == self.kernel_size
                and self.padding == (0, 0) and self.groups == 1):
            return F.linear(x.flatten(1), self.weight.flatten(1), self.bias)[:, :, None, None]
        return super().forward(x)


class GoogLeNetOutputs(NamedTuple):
    """What GoogLeNet returns in training mode, as torchvision's ``GoogLeNetOutputs`` (same fields, same order,
    so code that unpacks torchvision's by position gets the same heads): the main logits, then the auxiliary
    classifier after inception 4d (``aux_logits2``), then the one after 4a (``aux_logits1``). The trainer adds
    ``aux_weights[i]`` x the cross-entropy of each auxiliary output to the main loss, as Szegedy et al. 2014
    (Sec. 5) do: total = main + 0.3 aux1 + 0.3 aux2."""

    logits: torch.Tensor
    aux_logits2: torch.Tensor
    aux_logits1: torch.Tensor
    aux_weights = (0.3, 0.3)

    @property
    def aux1(self) -> torch.Tensor:
        """The classifier after inception 4a (cnnlab's earlier name; torchvision's is ``aux_logits1``)."""
        return self.aux_logits1

    @property
    def aux2(self) -> torch.Tensor:
        """The classifier after inception 4d (torchvision: ``aux_logits2``)."""
        return self.aux_logits2


class InceptionOutputs(NamedTuple):
    """What Inception v3 returns in training mode, as torchvision's ``InceptionOutputs``: the main logits and
    its one auxiliary head's logits (``aux_logits``), weighted 0.4 in the loss (torchvision's reference recipe;
    the paper gives no weight)."""

    logits: torch.Tensor
    aux_logits: torch.Tensor
    aux_weights = (0.4,)

    @property
    def aux(self) -> torch.Tensor:
        """The auxiliary head's logits (cnnlab's earlier name; torchvision's is ``aux_logits``)."""
        return self.aux_logits


def init_he_normal(model: nn.Module, mode: str = "fan_out") -> None:
    """He et al. 2015's initialisation for ReLU networks: every convolution's weights from N(0, 2 / fan), with
    ``mode`` the fan it counts ("fan_in" as in the paper; "fan_out", torchvision's choice for ResNet and VGG),
    its bias zero; BatchNorm scale 1 and shift 0. Linear layers are left to the family."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def linear_drop_probs(blocks: int, rate: float) -> list[float]:
    """Stochastic depth's linear decay rule (Huang et al. 2016, Eq. 4): block l of L is dropped with
    probability l / L x ``rate`` (its survival probability p_l = 1 - l / L (1 - p_L), with p_L = 1 - rate)."""
    return [rate * (i + 1) / blocks for i in range(blocks)]


def stochastic_residual(branch, x: torch.Tensor, identity: torch.Tensor, drop_prob: float,
                        training: bool) -> torch.Tensor:
    """identity + branch(x), with stochastic depth (Huang et al. 2016, Sec. 3): in training the branch is
    skipped for the whole mini-batch with probability ``drop_prob`` (and not computed, which is where the
    paper's speed-up comes from); at test time it is scaled by its survival probability (Eq. 5)."""
    if drop_prob == 0.0:
        return branch(x) + identity
    if training:
        # one draw per mini-batch from the global generator, so a seeded run is reproducible
        if torch.rand(()).item() < drop_prob:
            return identity
        return branch(x) + identity
    return branch(x) * (1.0 - drop_prob) + identity


class ResidualBlock(nn.Module):
    """A residual block, y = post(skip(x) + branch(x)) (He et al. 2016, Eq. 1), with stochastic depth.

    A family's block defines ``branch`` (the residual function F) and, where the identity does not fit,
    ``skip`` (zero-padding, a projection); ``post`` is what follows the sum (a ReLU, or nothing). A
    pre-activation block (He et al. 2016b) normalises its input once for both paths: ``pre`` runs first, the
    branch reads its result ``h``, and ``skip(x, h)`` chooses which one a projection reads. ``residual=False``
    makes it a plain block, post(branch(x)), with the same layers. ``drop_prob`` is stochastic depth (see
    ``stochastic_residual``). The block's modules, and so its state_dict keys, are the family's own.
    """

    residual: bool = True
    drop_prob: float = 0.0

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def skip(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return x

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def post(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def may_skip_parameters(self) -> bool:
        """Whether a training step may leave this block's parameters unused (stochastic depth)."""
        return self.residual and self.drop_prob > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre(x)
        if not self.residual:
            return self.post(self.branch(h))
        out = stochastic_residual(self.branch, h, self.skip(x, h), self.drop_prob, self.training)
        # A dropped branch returns the shortcut itself, which may be the block's input: an in-place ``post``
        # must not write into it (the caller's tensor, and one autograd may have saved for an earlier layer).
        return self.post(out.clone() if out is x else out)
