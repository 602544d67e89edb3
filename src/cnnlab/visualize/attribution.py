"""Which pixels a class score depends on.

* **Saliency** (Simonyan, Vedaldi & Zisserman 2014, "Deep inside convolutional networks", Sec. 3.1): the
  gradient of the class score (the logit, before the softmax) with respect to the input image; the map is its
  absolute value, maximised over the colour channels.
* **Grad-CAM** (Selvaraju et al. 2017, eq. 1-2): the feature maps A^k of a layer weighted by the spatial mean
  of d score / d A^k, summed over k, through a ReLU; upsampled bilinearly to the input and scaled to 0..1.

Both take gradients with ``torch.autograd.grad`` inside :func:`~cnnlab.visualize.hooks.capture`: nothing is
left on the model, no parameter ``.grad`` is touched, and in-place activations do not change the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.visualize.hooks import as_batch, capture, forward
from cnnlab.visualize.layers import gradcam_layer


@dataclass
class Attribution:
    map: np.ndarray  # H x W over the input image
    target: int  # the class explained
    probability: float  # the model's softmax probability of that class
    predicted: int  # the model's top class
    layer: str | None = None  # Grad-CAM's layer
    raw: np.ndarray | None = None  # Grad-CAM at the layer's resolution, before upsampling and scaling


def _target(logits: torch.Tensor, target: int | torch.Tensor | None) -> int:
    k = logits.shape[1]
    if target is None:
        return int(logits[0].argmax())
    if isinstance(target, (torch.Tensor, np.ndarray)):  # torch.tensor(3), as Captum's `target` takes it
        t = torch.as_tensor(target)
        if t.numel() != 1 or t.is_floating_point():
            raise CnnlabError(f"the target must be one class index for one image, got a tensor of shape "
                              f"{tuple(t.shape)} and type {t.dtype}")
        target = int(t.item())
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= target < k:
        raise CnnlabError(f"class {target!r} is out of range; this model has {k} classes, 0 to {k - 1}")
    return int(target)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = forward(model, x)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise CnnlabError(f"{type(model).__name__} does not return a batch of class scores "
                          f"(got {getattr(out, 'shape', type(out).__name__)})")
    return out


def saliency(model: nn.Module, x: torch.Tensor, target: int | None = None) -> Attribution:
    """Simonyan et al.'s saliency map of one preprocessed image ``x`` (C x H x W) for class ``target``
    (default: the predicted class)."""
    x = as_batch(model, x).detach().requires_grad_(True)
    with capture(model), torch.enable_grad():
        logits = _logits(model, x)
        t = _target(logits, target)
        (grad,) = torch.autograd.grad(logits[0, t], x)
    p = F.softmax(logits.detach().float(), 1)[0]
    smap = grad[0].abs().amax(0).float().cpu().numpy()
    return Attribution(smap, t, float(p[t]), int(p.argmax()))


def gradcam(model: nn.Module, x: torch.Tensor, layer: str | nn.Module | None = None,
            target: int | torch.Tensor | None = None) -> Attribution:
    """Grad-CAM of one preprocessed image ``x`` (C x H x W) at ``layer``, a module of ``model`` or its name
    (default: see :data:`~cnnlab.visualize.layers.GRADCAM_LAYERS`), for class ``target`` (default: the
    predicted class)."""
    x = as_batch(model, x)
    if isinstance(layer, nn.Module):  # as pytorch-grad-cam's target_layers and Captum's LayerGradCam take it
        name = next((n for n, m in model.named_modules() if m is layer), None)
        if name is None:
            raise CnnlabError(f"the {type(layer).__name__} given as `layer` is not a module of this "
                              f"{type(model).__name__}; give one of its modules (e.g. model.layer4) or a name",
                              params=("layer",))
        layer = name
    layer = layer or gradcam_layer(model, tuple(x.shape[1:]))
    # the input takes part in the graph, so a frozen model still has one
    x = x.detach().requires_grad_(True)
    with capture(model, [layer]) as cap, torch.enable_grad():
        logits = _logits(model, x)
        t = _target(logits, target)
        cap.check()
        a = cap.outputs[layer]
        if a.dim() != 4:
            raise CnnlabError(f"Grad-CAM needs a layer with spatial maps; {layer!r} outputs "
                              f"{'x'.join(map(str, a.shape[1:]))}")
        g = cap.gradients(logits[0, t])[layer]
    weights = g.float().mean((2, 3), keepdim=True)  # alpha_k: global-average-pooled gradients
    cam = F.relu((weights * a.float()).sum(1, keepdim=True))  # 1 x 1 x h x w
    up = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[0, 0]
    top = up.max()
    up = up / top if top > 0 else torch.zeros_like(up)
    p = F.softmax(logits.detach().float(), 1)[0]
    return Attribution(up.cpu().numpy(), t, float(p[t]), int(p.argmax()), layer, cam[0, 0].cpu().numpy())
