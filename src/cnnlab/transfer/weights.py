"""Pretrained weights, classifier heads, freezing and embeddings for every model of the zoo."""

from __future__ import annotations

import os
import re
import types
import urllib.error
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.registry import (canonical_name, head_keys, head_names, is_auxiliary, model_config,
                                    set_model_config)
from cnnlab.models.registry import create_model as _build

# cnnlab name -> torchvision weights enum, for the names that use torchvision's module tree
TORCHVISION_WEIGHTS = {
    "alexnet": "AlexNet_Weights", "vgg11": "VGG11_Weights", "vgg11_bn": "VGG11_BN_Weights",
    "vgg13": "VGG13_Weights", "vgg13_bn": "VGG13_BN_Weights", "vgg16": "VGG16_Weights",
    "vgg16_bn": "VGG16_BN_Weights", "vgg19": "VGG19_Weights", "vgg19_bn": "VGG19_BN_Weights",
    "googlenet": "GoogLeNet_Weights", "inception_v3": "Inception_V3_Weights",
    "resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights", "resnet152": "ResNet152_Weights",
    "resnext50_32x4d": "ResNeXt50_32X4D_Weights", "resnext101_32x8d": "ResNeXt101_32X8D_Weights",
    "wide_resnet50_2": "Wide_ResNet50_2_Weights", "wide_resnet101_2": "Wide_ResNet101_2_Weights",
    "densenet121": "DenseNet121_Weights", "densenet161": "DenseNet161_Weights",
    "densenet169": "DenseNet169_Weights", "densenet201": "DenseNet201_Weights",
}
# torchvision's GoogLeNet and Inception v3 weights expect inputs scaled to [-1, 1]; the model converts
_TRANSFORM_INPUT = {"googlenet", "inception_v3"}
# the normalisation every torchvision ImageNet classification weight expects (their transforms() say so)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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
            aux = all(map(is_auxiliary, self.unused))
            parts.append(f"unused: {len(self.unused)} {'auxiliary-head tensors' if aux else 'classifier tensors'}")
        return "; ".join(parts)


@dataclass(frozen=True)
class _Weights:
    """Weights read from a source, and what they say about themselves."""

    state: dict
    source: str  # in words, for reports and the model's config
    classes: int | None  # their class count (None: unknown)
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    options: dict  # model options the weights were trained with (a cnnlab run's) or need (transform_input)


def heads(model: nn.Module, name: str | None = None, **options) -> list[str]:
    """Names of the head modules (main head last); ``name`` and ``options`` default to the model's config."""
    return head_names(model, name, **options)


def pretrained_options(name: str, source: str) -> dict:
    """Model options a weights source needs (torchvision's GoogLeNet/Inception weights: transform_input)."""
    if _is_torchvision_name(source) and canonical_name(name) in _TRANSFORM_INPUT:
        return {"transform_input": True}
    return {}


def _is_torchvision_name(source: str) -> bool:
    """A weights tag such as DEFAULT or IMAGENET1K_V1 (capitals, digits, underscores) that is not a file here."""
    return re.fullmatch(r"[A-Z][A-Z0-9_]*", source) is not None and not Path(source).exists()


def _source_text(source) -> str:
    """A weights source as text: a path, a tag such as "IMAGENET1K_V1", or a torchvision weights enum member."""
    if hasattr(source, "url") and hasattr(source, "transforms") and hasattr(source, "name"):  # ResNet18_Weights.X
        return source.name
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    raise CnnlabError(f"weights are named by a tag such as 'IMAGENET1K_V1' or 'DEFAULT', a torchvision weights "
                      f"enum, or the path of a run folder, checkpoint or state_dict; got {type(source).__name__}",
                      params=("pretrained",))


def _read_source(name: str, source: str) -> _Weights:
    if _is_torchvision_name(source):
        return _torchvision_weights(name, source)
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
        info = ckpt["info"]
        if info.model != canonical_name(name):
            raise CnnlabError(f"{file} holds a {info.model}, not a {name}; pass `model` {info.model}",
                              params=("model",))
        mean, std = info.view.stats()
        return _Weights(ckpt["model"], str(file), info.num_classes, tuple(mean), tuple(std), dict(info.model_options))
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CnnlabError(f"{file} is neither a cnnlab checkpoint nor a state_dict of tensors")
    return _Weights(obj, str(file), _class_count(name, obj), None, None, {})


def _class_count(name: str, state: dict) -> int | None:
    """The class count of a state_dict for ``name``: the rows of its main head's first tensor."""
    keys = sorted(k for k in head_keys(name) if not is_auxiliary(k) and k in state)
    return int(state[keys[0]].shape[0]) if keys else None


def _torchvision_weights(name: str, source: str) -> _Weights:
    import torchvision.models as tvm

    name = canonical_name(name)
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
    return _Weights(sd, f"torchvision {enum.__name__}.{weights.name}", len(weights.meta["categories"]),
                    IMAGENET_MEAN, IMAGENET_STD, pretrained_options(name, source))


def load_pretrained(model: nn.Module, name: str | None, source=None, **options) -> LoadReport:
    """Load ``source`` into ``model``; heads whose class count differs stay fresh. Anything else that does not
    fit is another architecture: a clear error.

    ``source`` is a cnnlab run folder or checkpoint, a state_dict file, or a torchvision weights tag
    (``"IMAGENET1K_V1"``, ``"DEFAULT"``) or enum member. A model built by cnnlab knows its name and options:
    ``load_pretrained(model, source)``; ``load_pretrained(model, name, source, **options)`` names them for any
    other. torchvision's GoogLeNet and Inception v3 weights switch the model's ``transform_input`` on, as
    torchvision does. The model's config (``model.cnnlab_config``) records the source and the normalisation the
    weights expect."""
    config = model_config(model)
    if source is None:  # load_pretrained(model, source)
        if config is None:
            raise CnnlabError(f"this {type(model).__name__} was not built by cnnlab.create_model, so name it: "
                              f"load_pretrained(model, name, source)", params=("name",))
        name, source, options = config.name, name, {**config.options, **options}
    name = canonical_name(name)
    weights = _read_source(name, _source_text(source))
    report = _load_state(model, name, weights, options)
    if weights.options.get("transform_input") and hasattr(model, "transform_input"):
        model.transform_input = True  # the weights expect [-1, 1] inputs; the model converts ImageNet-normalised ones
    if config is not None:
        set_model_config(model, replace(config, options={**config.options, **weights.options}, weights=weights.source,
                                        mean=weights.mean, std=weights.std))
    return report


def _load_state(model: nn.Module, name: str, weights: _Weights, options: dict) -> LoadReport:
    sd, desc = weights.state, weights.source
    config = model_config(model)
    headless = config is not None and config.num_classes == 0
    own = model.state_dict()
    head = head_keys(name, **options)
    report = LoadReport(desc)
    keep, wrong = {}, []
    for k, v in sd.items():
        if k not in own:
            (report.unused if is_auxiliary(k) or (headless and k in head) else wrong).append(k)
        elif own[k].shape != v.shape:
            (report.new if k in head else wrong).append(k)
        else:
            keep[k] = v
            report.loaded.append(k)
    missing = [k for k in own if k not in sd and not is_auxiliary(k) and not k.endswith("num_batches_tracked")]
    if wrong or missing:
        example = (wrong or missing)[0]
        what = "does not fit" if wrong else "is missing"
        raise CnnlabError(f"{desc} is not a {name}: {len(wrong) + len(missing)} tensors do not match "
                          f"(e.g. {example!r} {what}); pick the model these weights were trained for")
    report.new += [k for k in own if k not in sd and is_auxiliary(k)]
    model.load_state_dict(keep, strict=False)
    return report


def create_model(name: str, pretrained=False, num_classes: int | None = None, in_chans: int | None = None, *,
                 weights=None, **options) -> nn.Module:
    """Build a model of the zoo, with weights: timm's ``create_model`` and torchvision's ``weights=``.

    ``pretrained`` (or ``weights``, torchvision's name for it) is False for fresh weights, True for the model's
    default torchvision weights, a weights tag (``"IMAGENET1K_V1"``) or enum member
    (``ResNet18_Weights.IMAGENET1K_V1``), or the path of a cnnlab run folder, checkpoint or state_dict. The
    model's options that the weights need are set (``transform_input`` for torchvision's GoogLeNet and
    Inception v3; a run's own options). ``num_classes`` None keeps the weights' classes; another count keeps
    the backbone and gives fresh classifier heads; 0 returns the pooled features (no classifier). The model
    carries its config: ``model.cnnlab_config`` (name, options, input size, mean/std its weights expect, their
    source), and timm's ``model.pretrained_cfg``.
    """
    if weights is not None and pretrained not in (False, None):
        raise CnnlabError("give the weights once: `pretrained` or `weights`, not both",
                          params=("pretrained", "weights"))
    source = weights if weights is not None else pretrained
    if source is None or source is False:
        return _build(name, num_classes, in_chans, **options)
    name = canonical_name(name)
    if source is True:
        if name not in TORCHVISION_WEIGHTS:
            raise CnnlabError(f"{name} has no default weights (torchvision has none for it); pass `pretrained` the "
                              f"path of a cnnlab run or state_dict, or train one with `cnnlab train {name}`",
                              params=("pretrained",))
        source = "DEFAULT"
    if hasattr(source, "url") and type(source).__name__ != TORCHVISION_WEIGHTS.get(name):
        raise CnnlabError(f"{type(source).__name__}.{source.name} are not weights for {name}; "
                          f"{name}'s are {TORCHVISION_WEIGHTS.get(name, 'none')}", params=("pretrained",))
    w = _read_source(name, _source_text(source))
    options = {**w.options, **options}
    model = _build(name, w.classes if num_classes is None else num_classes, in_chans, **options)
    _load_state(model, name, w, options)
    return set_model_config(model, replace(model_config(model), weights=w.source, mean=w.mean, std=w.std))


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


def embed(model: nn.Module, name, images=None, batch_size: int = 256, **options) -> np.ndarray:
    """Penultimate-layer features: the input of the main classifier head, flattened, for preprocessed
    ``images`` (an N x C x H x W tensor, or an iterable of such batches). Hooks are removed afterwards.

    ``embed(model, images)`` for a model cnnlab built (it knows its name and options);
    ``embed(model, name, images, **options)`` for any other."""
    if images is None:  # embed(model, images)
        name, images = None, name
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
