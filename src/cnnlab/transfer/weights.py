"""Pretrained weights, classifier heads, freezing and embeddings for every model of the zoo."""

from __future__ import annotations

import functools
import types
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.registry import create_model

# cnnlab name -> torchvision weights enum, for the names that use torchvision's module tree
TORCHVISION_WEIGHTS = {
    "alexnet": "AlexNet_Weights", "vgg11": "VGG11_Weights", "vgg11_bn": "VGG11_BN_Weights",
    "vgg13": "VGG13_Weights", "vgg13_bn": "VGG13_BN_Weights", "vgg16": "VGG16_Weights",
    "vgg16_bn": "VGG16_BN_Weights", "vgg19": "VGG19_Weights", "vgg19_bn": "VGG19_BN_Weights",
    "googlenet_bn": "GoogLeNet_Weights", "inception_v3": "Inception_V3_Weights",
    "resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights", "resnet152": "ResNet152_Weights",
    "resnext50_32x4d": "ResNeXt50_32X4D_Weights", "resnext101_32x8d": "ResNeXt101_32X8D_Weights",
    "wide_resnet50_2": "Wide_ResNet50_2_Weights", "wide_resnet101_2": "Wide_ResNet101_2_Weights",
    "densenet121": "DenseNet121_Weights", "densenet161": "DenseNet161_Weights",
    "densenet169": "DenseNet169_Weights", "densenet201": "DenseNet201_Weights",
}
# torchvision's GoogLeNet and Inception v3 weights expect inputs scaled to [-1, 1]; the model converts
_TRANSFORM_INPUT = {"googlenet_bn", "inception_v3"}


@dataclass
class LoadReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)  # head parameters left freshly initialised
    unused: list[str] = field(default_factory=list)  # auxiliary-head weights the model does not have

    def text(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        if self.new:
            modules = sorted({k.rsplit(".", 1)[0] for k in self.new})
            parts.append(f"new (fresh head for the new classes): {', '.join(modules)}")
        if self.unused:
            parts.append(f"unused: {len(self.unused)} auxiliary-head tensors")
        return "; ".join(parts)


def _is_aux(key: str) -> bool:
    return key.split(".", 1)[0].lower().startswith("aux")


def head_keys(name: str, **options) -> set[str]:
    """The state_dict keys that depend on the class count: every classifier head, auxiliary ones included.
    Found by building the model for two class counts on the meta device and comparing shapes."""
    return set(_head_keys(name, tuple(sorted(options.items()))))


@functools.lru_cache(maxsize=64)
def _head_keys(name: str, options: tuple) -> frozenset[str]:
    with torch.device("meta"):
        a = create_model(name, num_classes=7, **dict(options)).state_dict()
        b = create_model(name, num_classes=11, **dict(options)).state_dict()
    return frozenset(k for k in a if k in b and a[k].shape != b[k].shape)


def heads(model: nn.Module, name: str, **options) -> list[str]:
    """Names of the head modules (main head last)."""
    keys = head_keys(name, **options)
    mods = {k.rsplit(".", 1)[0] for k in keys}
    order = [n for n, _ in model.named_modules() if n in mods]
    return sorted(order, key=lambda n: (not _is_aux(n), order.index(n)))


def pretrained_options(name: str, source: str) -> dict:
    """Model options a weights source needs (torchvision's GoogLeNet/Inception weights: transform_input)."""
    if _is_torchvision_name(source) and name in _TRANSFORM_INPUT:
        return {"transform_input": True}
    return {}


def _is_torchvision_name(source: str) -> bool:
    return source == "DEFAULT" or (source.isupper() and "_" in source and not Path(source).exists())


def _read_source(name: str, source: str) -> tuple[dict, str]:
    if _is_torchvision_name(source):
        return _torchvision_state_dict(name, source)
    path = Path(source).expanduser()
    if not path.exists():
        raise CnnlabError(f"no weights at {source!r}: give a cnnlab run folder or checkpoint, a state_dict file, "
                          f"or a torchvision weights name such as IMAGENET1K_V1")
    from cnnlab.fileio import load_torch
    from cnnlab.runs import as_checkpoint, resolve

    file = resolve(path)
    obj = load_torch(file, "weights file")
    ckpt = as_checkpoint(obj, file)
    if ckpt is not None:
        trained = ckpt["info"].model
        if trained != name:
            raise CnnlabError(f"{file} holds a {trained}, not a {name}; pass `model` {trained}", params=("model",))
        return ckpt["model"], str(file)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CnnlabError(f"{file} is neither a cnnlab checkpoint nor a state_dict of tensors")
    return obj, str(file)


def _torchvision_state_dict(name: str, source: str) -> tuple[dict, str]:
    import torchvision.models as tvm

    if name not in TORCHVISION_WEIGHTS:
        raise CnnlabError(f"{name} has no torchvision weights; those are for {', '.join(TORCHVISION_WEIGHTS)}")
    enum = getattr(tvm, TORCHVISION_WEIGHTS[name])
    try:
        weights = enum[source] if source != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise CnnlabError(f"{name} has no torchvision weights {source!r}; choose from "
                          f"{', '.join(w.name for w in enum)}") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        # official URL; the file name carries the first digits of its SHA-256, checked after download
        sd = torch.hub.load_state_dict_from_url(weights.url, progress=True, check_hash=True, map_location="cpu",
                                                weights_only=True)
    except (urllib.error.URLError, OSError) as e:
        raise CnnlabError(f"could not fetch {weights.url} ({type(e).__name__}); offline, put the file at {cached} "
                          f"or pass its path instead of {source}") from None
    except RuntimeError as e:
        raise CnnlabError(f"{cached} is corrupt ({str(e).splitlines()[0]}); delete it and try again") from None
    return sd, f"torchvision {enum.__name__}.{weights.name}"


def load_pretrained(model: nn.Module, name: str, source: str, **options) -> LoadReport:
    """Load ``source`` into ``model`` (a ``name`` built with ``options``); heads whose class count differs
    stay fresh. Anything else that does not fit is another architecture: a clear error."""
    sd, desc = _read_source(name, source)
    own = model.state_dict()
    head = head_keys(name, **options)
    report = LoadReport(desc)
    keep, wrong = {}, []
    for k, v in sd.items():
        if k not in own:
            (report.unused if _is_aux(k) else wrong).append(k)
        elif own[k].shape != v.shape:
            (report.new if k in head else wrong).append(k)
        else:
            keep[k] = v
            report.loaded.append(k)
    missing = [k for k in own if k not in sd and not _is_aux(k) and not k.endswith("num_batches_tracked")]
    if wrong or missing:
        example = (wrong or missing)[0]
        what = "does not fit" if wrong else "is missing"
        raise CnnlabError(f"{desc} is not a {name}: {len(wrong) + len(missing)} tensors do not match "
                          f"(e.g. {example!r} {what}); pick the model these weights were trained for")
    report.new += [k for k in own if k not in sd and _is_aux(k)]
    model.load_state_dict(keep, strict=False)
    return report


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's top-level children, Sequentials opened one level: the units --unfreeze counts."""
    out = []
    for n, m in model.named_children():
        if isinstance(m, nn.Sequential):
            out += [(f"{n}.{c}", sub) for c, sub in m.named_children()]
        else:
            out.append((n, m))
    return [(n, m) for n, m in out if any(True for _ in m.parameters())]


def freeze_backbone(model: nn.Module, head_names: list[str], unfreeze: int = 0) -> list[str]:
    """Freeze every parameter outside the heads and the last ``unfreeze`` blocks; the frozen blocks stay in
    eval mode (BatchNorm statistics fixed, no dropout) even when the model is put in training mode.
    Returns the names of the trainable modules."""
    if unfreeze < 0:
        raise CnnlabError(f"`unfreeze` must be 0 or more, got {unfreeze}", params=("unfreeze",))
    heads_set = set(head_names)
    blocks = [(n, m) for n, m in _blocks(model)
              if n not in heads_set and not any(h == n or h.startswith(n + ".") for h in heads_set)]
    if unfreeze > len(blocks):
        raise CnnlabError(f"`unfreeze` {unfreeze} is more than the {len(blocks)} blocks of this backbone (outside its "
                          f"heads); use at most {len(blocks)}, or fine-tune the whole network", params=("unfreeze",))
    trainable = set(head_names) | {n for n, _ in blocks[len(blocks) - unfreeze:]} if unfreeze else set(head_names)
    frozen = []
    for n, m in blocks:
        if n not in trainable:
            for p in m.parameters():
                p.requires_grad_(False)
            frozen.append(m)
    # parameters outside the listed blocks (e.g. inside a container holding a head) that are not heads
    for pname, p in model.named_parameters():
        outside = not any(pname.startswith(n + ".") for n, _ in blocks)
        if outside and p.requires_grad and not any(pname.startswith(t + ".") for t in trainable):
            p.requires_grad_(False)
    model._cnnlab_frozen = frozen

    def train(self, mode: bool = True):
        nn.Module.train(self, mode)
        for m in self._cnnlab_frozen:
            m.eval()
        return self

    model.train = types.MethodType(train, model)
    model.train(model.training)
    return sorted(trainable)


def param_groups(model: nn.Module, head_names: list[str], backbone_scale: float) -> list[tuple[list, float]]:
    """(parameters, learning-rate scale) for the heads (1.0) and the backbone (``backbone_scale``)."""
    head, backbone = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (head if any(n.startswith(h + ".") for h in head_names) else backbone).append(p)
    return [(head, 1.0), (backbone, backbone_scale)]


def embed(model: nn.Module, name: str, images, batch_size: int = 256, **options) -> np.ndarray:
    """Penultimate-layer features: the input of the main classifier head, flattened, for preprocessed
    ``images`` (an N x C x H x W tensor, or an iterable of such batches). Hooks are removed afterwards."""
    if isinstance(images, torch.Tensor):
        images = images.split(batch_size)
    module = model.get_submodule(heads(model, name, **options)[-1])
    captured = []
    handle = module.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach().flatten(1)))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x in images:
                model(x)
    finally:
        handle.remove()
        model.train(was)
    return torch.cat(captured).float().numpy()


def source_model(source: str) -> str:
    """The architecture of the cnnlab run folder or checkpoint ``source`` (the model to build when the caller
    names none); other weights do not say which architecture they are for."""
    from cnnlab.runs import load_checkpoint

    if not Path(source).expanduser().exists():
        raise CnnlabError(f"`pretrained` {source} is not a file or run folder; for torchvision weights name the "
                          f"architecture with `model`", params=("pretrained", "model"))
    try:
        return load_checkpoint(source)["info"].model
    except CnnlabError:
        raise CnnlabError(f"{source} is not a cnnlab checkpoint, so name its architecture with `model`",
                          params=("model",)) from None
