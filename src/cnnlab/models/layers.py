"""Layers shared by several families."""

from __future__ import annotations

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
        return self.A * torch.tanh(self.S * x)
