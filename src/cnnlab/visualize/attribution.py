"""Which pixels a class score depends on.

* **Saliency** (Simonyan, Vedaldi & Zisserman 2014, "Deep inside convolutional networks", Sec. 3.1): the
  gradient of the class score (the logit, before the softmax) with respect to the input image; the map is its
  absolute value, maximised over the colour channels, raw unless asked to be scaled.
* **Grad-CAM** (Selvaraju et al. 2017, eq. 1-2): the feature maps A^k of a layer weighted by the spatial mean
  of d score / d A^k, summed over k, through a ReLU; upsampled bilinearly to the input and scaled to 0..1 (its
  minimum to 0, as pytorch-grad-cam does, unless asked otherwise).

Both take one image (C x H x W) or a batch (N x C x H x W) and answer in the input's shape, as Captum and
pytorch-grad-cam do; the target is Captum's: an int, one per image, or None for the predicted class. They take
gradients with ``torch.autograd.grad`` inside :func:`~cnnlab.visualize.hooks.capture`: nothing is left on the
model, no parameter ``.grad`` is touched, and in-place activations do not change the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.visualize.hooks import as_images, capture, forward
from cnnlab.visualize.layers import gradcam_layer

NORMALIZE = ("max", "minmax", None)  # the scales a map can be given: see Attribution


@dataclass
class Attribution:
    """What :func:`saliency` and :func:`gradcam` return, shaped like their input (Captum's convention).

    For one image (C x H x W), ``map`` is H x W and ``target``, ``probability`` and ``predicted`` are numbers.
    For a batch (N x C x H x W, N = 1 included), ``map`` is N x H x W and they are arrays of length N; ``len(att)``
    is N, ``att[i]`` is image i's own Attribution and ``for a in att`` goes through them.

    ``normalize`` says how ``map`` was scaled, per image:

    * ``None``: raw. Saliency: |d score / d pixel|, maximised over the colour channels, in score units per input
      unit (Captum's ``Saliency(abs=True)`` before that maximum). Grad-CAM: ReLU(sum_k alpha_k A^k) upsampled
      (Captum's ``LayerGradCam`` then ``LayerAttribution.interpolate``).
    * ``"max"``: divided by its maximum, so 0 stays "no evidence" and the peak is 1; a map of zeros stays zeros.
    * ``"minmax"``: its minimum to 0 and its maximum to 1 (pytorch-grad-cam's ``scale_cam_image``); a map that
      is the same everywhere becomes zeros.

    Saliency's default is raw, Grad-CAM's min-max: each peer's own default. ``raw`` (Grad-CAM only) is the map at
    the layer's resolution, before upsampling and scaling (h x w, or N x h x w).
    """

    map: np.ndarray  # H x W over the input image (N x H x W for a batch)
    target: int | np.ndarray  # the class explained
    probability: float | np.ndarray  # the model's softmax probability of that class
    predicted: int | np.ndarray  # the model's top class
    layer: str | None = None  # Grad-CAM's layer
    raw: np.ndarray | None = None  # Grad-CAM at the layer's resolution, before upsampling and scaling
    normalize: str | None = None  # how map was scaled: None (raw), "max" or "minmax"

    @property
    def batched(self) -> bool:
        return self.map.ndim == 3

    def __len__(self) -> int:
        return len(self.map) if self.batched else 1

    def __getitem__(self, i: int | slice) -> Attribution:
        if not self.batched:  # one image's Attribution is a sequence of itself, as a character is a str
            if isinstance(i, slice) or i not in (0, -1):
                raise IndexError(f"image {i} of one image")
            return self
        if isinstance(i, slice):
            return Attribution(self.map[i], self.target[i], self.probability[i], self.predicted[i], self.layer,
                               None if self.raw is None else self.raw[i], self.normalize)
        return Attribution(self.map[i], int(self.target[i]), float(self.probability[i]), int(self.predicted[i]),
                           self.layer, None if self.raw is None else self.raw[i], self.normalize)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def _repr_png_(self) -> bytes:  # a notebook shows the map (plots.plot_saliency / plot_gradcam add the image)
        from cnnlab.fileio import png_bytes
        from cnnlab.visualize.plots import plot_gradcam, plot_saliency

        return png_bytes((plot_saliency if self.layer is None else plot_gradcam)(None, self))


def _check_normalize(normalize) -> None:
    if not any(normalize is n or normalize == n for n in NORMALIZE):
        raise CnnlabError(f"`normalize` must be 'max', 'minmax' or None, got {normalize!r}", params=("normalize",))


def _scale(maps: torch.Tensor, normalize: str | None) -> torch.Tensor:
    """``maps`` (N x H x W) scaled per image as ``normalize`` says (see :class:`Attribution`)."""
    if normalize is None:
        return maps
    lo = maps.amin((1, 2), keepdim=True) if normalize == "minmax" else torch.zeros_like(maps[:, :1, :1])
    span = maps.amax((1, 2), keepdim=True) - lo
    return torch.where(span > 0, (maps - lo) / span.clamp(min=torch.finfo(maps.dtype).tiny), 0.0)


def _targets(logits: torch.Tensor, target, batched: bool) -> torch.Tensor:
    """The class to explain for each image (N), from ``target`` as Captum takes it: None (the predicted class),
    one int for every image, a list of one per image, or a tensor (one element, or 1-d of length N)."""
    n, k = logits.shape
    images = f"{n} image{'s' * (n != 1)}"
    if target is None:
        return logits.detach().argmax(1)
    if isinstance(target, (torch.Tensor, np.ndarray)):  # torch.tensor(3), as Captum's `target` takes it
        t = torch.as_tensor(target)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise CnnlabError(f"the target must hold class indices (integers), got a tensor of type {t.dtype}")
        if t.numel() == 1:
            values = [int(t.item())] * n
        elif not batched:
            raise CnnlabError(f"the target must be one class index for one image, got a tensor of shape "
                              f"{tuple(t.shape)} and type {t.dtype}")
        elif t.dim() == 1 and len(t) == n:
            values = t.tolist()
        else:
            raise CnnlabError(f"the target must be one class for all {images} or a 1-d tensor of one per image, got "
                              f"a tensor of shape {tuple(t.shape)}")
    elif isinstance(target, (list, tuple)):
        if len(target) != n:
            raise CnnlabError(f"the target list has {len(target)} class{'es' * (len(target) != 1)} for {images}; "
                              f"give one per image, or one int for all")
        values = list(target)
    else:
        values = [target] * n
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise CnnlabError(f"the target must be a class index (an int), a list of them or a tensor, got {v!r}")
        if not 0 <= v < k:
            where = f" (image {i})" if batched else ""
            raise CnnlabError(f"class {v!r}{where} is out of range; this model has {k} classes, 0 to {k - 1}")
    return torch.tensor([int(v) for v in values], device=logits.device)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = forward(model, x)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise CnnlabError(f"{type(model).__name__} does not return a batch of class scores "
                          f"(got {getattr(out, 'shape', type(out).__name__)})")
    return out


def _score(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # The model runs in eval mode, where the images of a batch do not meet (batch norm uses its running
    # statistics): the gradient of the sum of their scores is each image's own gradient, as pytorch-grad-cam's
    # sum of ClassifierOutputTargets and Captum's batched targets assume.
    return logits.gather(1, t[:, None]).sum()


def _result(maps: torch.Tensor, logits: torch.Tensor, t: torch.Tensor, batched: bool, normalize: str | None,
            layer: str | None = None, raw: torch.Tensor | None = None) -> Attribution:
    p = F.softmax(logits.detach().float(), 1)
    prob, pred = p.gather(1, t[:, None])[:, 0].cpu().numpy(), p.argmax(1).cpu().numpy()
    maps, t = maps.float().cpu().numpy(), t.cpu().numpy()
    raw = None if raw is None else raw.float().cpu().numpy()
    if batched:
        return Attribution(maps, t, prob, pred, layer, raw, normalize)
    return Attribution(maps[0], int(t[0]), float(prob[0]), int(pred[0]), layer, None if raw is None else raw[0],
                       normalize)


def saliency(model: nn.Module, x: torch.Tensor, target=None, *, normalize: str | None = None) -> Attribution:
    """Simonyan et al.'s saliency map of a preprocessed image ``x`` (C x H x W) or batch (N x C x H x W) for class
    ``target``: an int, a list or tensor of one per image, or None for each image's predicted class. The map is
    raw by default (|d score / d pixel|, max over channels; Captum's ``Saliency`` is raw too); ``normalize``
    "max" or "minmax" scales each image's map to 0..1 (see :class:`Attribution`)."""
    _check_normalize(normalize)
    x, batched = as_images(model, x)
    x = x.detach().requires_grad_(True)
    with capture(model), torch.enable_grad():
        logits = _logits(model, x)
        t = _targets(logits, target, batched)
        (grad,) = torch.autograd.grad(_score(logits, t), x)
    return _result(_scale(grad.abs().amax(1).float(), normalize), logits, t, batched, normalize)


def gradcam(model: nn.Module, x: torch.Tensor, layer: str | nn.Module | None = None, target=None, *,
            normalize: str | None = "minmax") -> Attribution:
    """Grad-CAM of a preprocessed image ``x`` (C x H x W) or batch (N x C x H x W) at ``layer``, a module of
    ``model`` or its name (default: see :data:`~cnnlab.visualize.layers.GRADCAM_LAYERS`), for class ``target``:
    an int, a list or tensor of one per image, or None for each image's predicted class.

    The map is upsampled bilinearly to the input and scaled per image by ``normalize``: "minmax" by default,
    pytorch-grad-cam's scale (its minimum 0, its maximum 1), so the pictures match the tool most Grad-CAM
    pictures are drawn with and use the colour map's whole range; "max" keeps 0 as "no evidence" (a map
    positive everywhere keeps its floor); None gives the raw values (see :class:`Attribution`)."""
    _check_normalize(normalize)
    x, batched = as_images(model, x)
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
        t = _targets(logits, target, batched)
        cap.check()
        a = cap.outputs[layer]
        if a.dim() != 4:
            raise CnnlabError(f"Grad-CAM needs a layer with spatial maps; {layer!r} outputs "
                              f"{'x'.join(map(str, a.shape[1:]))}")
        g = cap.gradients(_score(logits, t))[layer]
    weights = g.float().mean((2, 3), keepdim=True)  # alpha_k: global-average-pooled gradients
    cam = F.relu((weights * a.float()).sum(1, keepdim=True))  # N x 1 x h x w
    up = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    return _result(_scale(up, normalize), logits, t, batched, normalize, layer, cam[:, 0])
