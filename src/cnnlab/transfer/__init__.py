"""Reusing what a network learned: pretrained weights, head replacement, freezing, embeddings.

* :func:`create_model` (also ``cnnlab.create_model``) builds a zoo model with weights, timm's way:
  ``pretrained=True``, a weights tag or enum member, or a path; ``num_classes=0`` for pooled features.
* :func:`load_pretrained` fills a zoo model from a cnnlab checkpoint (a run folder or ``.pt``), a torchvision
  weights name (``"IMAGENET1K_V1"``, for the torchvision-compatible models; downloaded from torchvision's
  official URL with its hash checked when online, read from the torch hub cache when not) or a state_dict
  file. When the class count differs, the backbone is loaded and the classifier heads (auxiliary heads
  included) stay freshly initialised; everything else must match, or it is another architecture.
* :func:`heads` finds a model's classifier layers, :func:`freeze_backbone` freezes everything else and keeps
  the frozen BatchNorm statistics fixed (the frozen part stays in eval mode even while the model trains).
* :func:`embed` computes penultimate-layer features (the lecture's "off-the-shelf features").
"""

from cnnlab.transfer.weights import (
    TORCHVISION_WEIGHTS,
    LoadReport,
    create_model,
    embed,
    freeze_backbone,
    heads,
    load_pretrained,
    param_groups,
)

__all__ = [
    "TORCHVISION_WEIGHTS",
    "LoadReport",
    "create_model",
    "embed",
    "freeze_backbone",
    "heads",
    "load_pretrained",
    "param_groups",
]
