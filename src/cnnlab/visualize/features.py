"""Feature maps: what each channel of a layer computes on one image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from cnnlab.visualize.hooks import as_batch, capture, forward
from cnnlab.visualize.layers import feature_layers


def feature_maps(model: nn.Module, x: torch.Tensor, layers: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The outputs of ``layers`` (default: up to four convolutions, first to last) for one preprocessed image
    ``x`` (C x H x W), per image: C x H x W arrays for maps, a vector for fully connected layers."""
    x = as_batch(model, x)
    layers = list(layers) if layers else feature_layers(model, tuple(x.shape[1:]))
    with capture(model, layers) as cap, torch.no_grad():
        forward(model, x)
        cap.check()
        return {name: cap.outputs[name][0].float().cpu().numpy() for name in layers}
