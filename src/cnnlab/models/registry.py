"""One registry, one way to build.

Every architecture registers a documented builder with :func:`register_model`: a function, whose name is
the model's name, or, for the rows of a paper's table, a ``functools.partial`` of the family's builder with
the row bound, named explicitly. Everything else — listing, building, cards, the test suite's
parametrisation — asks this registry, so a model added is a model listed, inspected and tested.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import inspect
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from cnnlab.errors import CnnlabError, CnnlabNote

if TYPE_CHECKING:  # only the annotations name nn.Module: the cards and names are read without importing torch
    from torch import nn

__all__ = ["ALIASES", "Figure", "ModelCard", "ModelConfig", "Paper", "PaperTable", "canonical_name", "create_model",
           "docstring", "documented", "head_keys", "head_names", "is_auxiliary", "is_model", "list_models",
           "matching", "meta_without_init", "model_card", "model_config", "model_entrypoint", "model_options",
           "register_model", "set_model_config", "torchvision_figures"]


@dataclass(frozen=True)
class Paper:
    title: str
    authors: str
    year: int
    url: str

    @property
    def citation(self) -> str:
        return f"{self.authors} ({self.year}). {self.title}. {self.url}"


# What a figure measures; the fidelity report and cards print these words.
METRICS = {
    "params": "parameters",
    "macs": "multiply-adds",
    "neurons": "neurons (conv and FC outputs)",
    "top1_err": "top-1 error %",
    "top5_err": "top-5 error %",
    "top1_acc": "top-1 accuracy %",
    "top5_acc": "top-5 accuracy %",
    "test_err": "test error %",
}
# Figures cnnlab can compute from the architecture alone; the others need trained weights.
COMPUTABLE = ("params", "macs", "neurons")


@dataclass(frozen=True)
class Figure:
    """A number published for an architecture, with where it was published.

    ``precision`` is how the source rounds it (1e6 for "133M"): our value agrees when it rounds to the
    same number. ``options`` are the ``create_model`` options of the variant the figure is for.
    """

    metric: str
    value: float
    source: str
    precision: float = 1.0
    note: str = ""
    options: dict = field(default_factory=dict, compare=False)  # create_model options it refers to
    # for accuracies: the cnnlab dataset whose test set the figure was measured on ("" if cnnlab has none, as
    # for ImageNet); `cnnlab fidelity --run` fills in a run's own figure only where its data is this one
    dataset: str = ""

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; known: {', '.join(METRICS)}")


def torchvision_figures(weights: str, params: int, gflops: float, top1: float, top5: float, *,
                        options: dict | None = None, params_note: str = "", macs_note: str = "") -> tuple[Figure, ...]:
    """The four figures of a torchvision weights enum's IMAGENET1K_V1 metadata. ``options`` are the
    ``create_model`` options the parameter and multiply-add counts refer to (e.g. without aux heads)."""
    src = f"torchvision {weights}.IMAGENET1K_V1 metadata"
    opts = dict(options or {})
    return (
        Figure("params", params, src, note=params_note, options=opts),
        Figure("macs", gflops * 1e9, src + " (its GFLOPS column counts multiply-adds)", 0.001e9, macs_note,
               options=opts),
        Figure("top1_acc", top1, src, 0.001, "ImageNet-1K val, torchvision weights"),
        Figure("top5_acc", top5, src, 0.001, "ImageNet-1K val, torchvision weights"),
    )


@dataclass(frozen=True)
class PaperTable:
    """A paper's per-layer table of parameters and operations, as printed, for the inspector to recompute
    from the model (``cnnlab summary`` prints both side by side; ``cnnlab.analysis.paper_tables``).

    ``rows`` maps each row to its printed (params, ops): params are weights without biases in K = 1024,
    ops are millions of multiply-adds, as in GoogLeNet's Table 1. ``modules`` names the model's modules
    that make up a row (default: the module of the row's name); ``options`` are the ``create_model``
    options the table describes. A printed figure agrees with ours within its own rounding (the last digit
    printed) or within ``tolerance``, a fraction of the figure, for tables whose figures are known to be
    rounded loosely.
    """

    source: str
    rows: dict[str, tuple[float, float]]
    modules: dict[str, tuple[str, ...]] = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    tolerance: float = 0.0


@dataclass(frozen=True)
class ModelCard:
    name: str
    paper: Paper
    input_size: tuple[int, int, int]
    num_classes: int
    summary: str
    figures: tuple[Figure, ...] = ()
    family: str = ""
    # A paper's table as printed (e.g. GoogLeNet's Table 1); `cnnlab summary` recomputes it and prints both.
    paper_table: PaperTable | None = field(default=None, repr=False, compare=False)

    def figure(self, metric: str) -> Figure | None:
        return next((f for f in self.figures if f.metric == metric), None)


@dataclass
class _Entry:
    builder: Callable[..., nn.Module]
    card: ModelCard = field(repr=False)


_REGISTRY: dict[str, _Entry] = {}


def register_model(*, paper: Paper, input_size: tuple[int, int, int], summary: str,
                   num_classes: int = 1000, figures: tuple[Figure, ...] = (),
                   paper_table: PaperTable | None = None, name: str | None = None):
    """Register ``fn(num_classes, in_chans, **options) -> nn.Module`` as model ``name`` (by default
    ``fn.__name__``) and return ``fn``. Its options are its parameters after ``num_classes`` and ``in_chans``,
    with their defaults.

    A decorator on a family's builder function, or called on a ``functools.partial`` that binds a table row
    positionally (bound keywords would read as options)::

        vgg16 = register_model(name="vgg16", paper=PAPER, ...)(documented(partial(_vgg, "D", False), doc))

    The builder needs a docstring: what it builds and the paper (see :func:`documented` for partials).
    """

    def decorate(fn):
        key = name or fn.__name__
        if key in _REGISTRY:
            raise RuntimeError(f"model {key!r} registered twice")
        if isinstance(fn, functools.partial) and fn.keywords:
            raise RuntimeError(f"model {key!r}: bind the partial's arguments by position, not {sorted(fn.keywords)}")
        if not docstring(fn):
            raise RuntimeError(f"model {key!r}: its builder has no docstring (say what it builds, cite the paper)")
        family = getattr(fn, "func", fn).__module__.rsplit(".", 1)[-1]
        card = ModelCard(name=key, paper=paper, input_size=tuple(input_size), num_classes=num_classes,
                         summary=summary, figures=tuple(figures), family=family,
                         paper_table=paper_table)
        _REGISTRY[key] = _Entry(fn, card)
        return fn

    return decorate


def documented(builder: functools.partial, doc: str) -> functools.partial:
    """``builder`` with ``doc`` as its docstring (a partial otherwise shows ``functools.partial``'s own)."""
    builder.__doc__ = doc
    return builder


def docstring(fn: Callable) -> str:
    """The builder's own docstring ("" if it has none; a bare partial's is its class's, not its own)."""
    doc = fn.__doc__
    return "" if doc is None or doc is type(fn).__doc__ else inspect.cleandoc(doc)


# One naming rule for every family: where torchvision has an architecture, the plain name is torchvision's build
# (so code and weights written for torchvision port by name: resnet50, googlenet, alexnet); where torchvision
# departs from the paper, the paper's build is NAME_paper (resnet50_paper, googlenet_paper, alexnet_paper).
# Architectures torchvision lacks keep their paper's name (lenet5, zfnet, resnet20); variants of a paper carry
# what makes them differ (lenet5_modern, vgg11_lrn, resnet110_sd). The names used before the rule still build
# their model, with a note: old name -> name.
ALIASES = {
    "googlenet_bn": "googlenet",
    "resnet50_v1": "resnet50_paper", "resnet101_v1": "resnet101_paper", "resnet152_v1": "resnet152_paper",
}
# Before the rule, "googlenet" was the paper's build; checkpoints written then (formats 1 and 2) mean that one.
RENAMED = {"googlenet": "googlenet_paper"}
_noted: set[str] = set()


def canonical_name(name: str) -> str:
    """The model's name under the naming rule (:data:`ALIASES`): an old name gives its new one, with a note the
    first time; any other name is returned as it is."""
    new = ALIASES.get(name)
    if new is None:
        return name
    if name not in _noted:
        _noted.add(name)
        warnings.warn(CnnlabNote(f"model {name!r} is now called {new!r} (cnnlab's one naming rule: plain names are "
                                 f"torchvision's builds, NAME_paper the paper's where they differ); the old name "
                                 f"still works"), stacklevel=3)
    return new


def _lookup(name: str) -> _Entry:
    _ensure_loaded()
    name = canonical_name(name) if isinstance(name, str) else name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        if not isinstance(name, str):
            raise CnnlabError(f"a model name is a string such as 'resnet18', got {type(name).__name__}") from None
        close = difflib.get_close_matches(name.lower(), list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise CnnlabError(f"unknown model {name!r}; {hint}`cnnlab models` lists them all") from None


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model or an old name of one (``model_card`` and ``create_model`` raise
    for any other)."""
    _ensure_loaded()
    return name in _REGISTRY or name in ALIASES


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` is a shell-style wildcard (``"vgg*"``) or a substring."""
    _ensure_loaded()
    return matching(sorted(_REGISTRY), pattern)


def matching(names: list[str], pattern: str | None) -> list[str]:
    """The ``names`` that ``pattern`` selects, as :func:`list_models` selects them."""
    if not pattern:
        return list(names)
    wild = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    return [n for n in names if fnmatch.fnmatchcase(n, wild)]


def model_card(name: str) -> ModelCard:
    return _lookup(name).card


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The registered builder itself (for its docstring and signature; build with ``create_model``)."""
    return _lookup(name).builder


def model_options(name: str) -> dict:
    """The options a model's builder accepts beyond ``num_classes`` and ``in_chans``, with their defaults."""
    params = inspect.signature(_lookup(name).builder).parameters
    return {k: p.default for k, p in params.items() if k not in ("num_classes", "in_chans")}


@dataclass(frozen=True)
class ModelConfig:
    """What a built model is, carried on it (``model.cnnlab_config``; timm's ``model.pretrained_cfg`` holds the
    same as a dict), so that the inspector, transfer and the pictures need not be told its name again.

    ``mean`` and ``std`` are the input normalisation its weights expect, and ``weights`` where they came from;
    both are None for freshly initialised weights (they depend on the data it will be trained on).
    """

    name: str
    num_classes: int  # 0: headless, the model returns its pooled features (num_features of them)
    in_chans: int
    input_size: tuple[int, int, int]  # C x H x W the model is made for (its card's, with in_chans)
    options: dict = field(default_factory=dict)  # create_model options as given
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    weights: str | None = None
    num_features: int | None = None  # headless models: the width of the features

    def as_dict(self) -> dict:
        """timm's ``pretrained_cfg`` keys (``architecture``, ``input_size``, ``mean``, ``std``, ``num_classes``)
        and cnnlab's."""
        d = asdict(self)
        d["architecture"], d["input_size"], d["source"] = self.name, tuple(self.input_size), self.weights
        return d


def model_config(model: nn.Module) -> ModelConfig | None:
    """The :class:`ModelConfig` a model was built with (None for a module cnnlab did not build)."""
    config = getattr(model, "cnnlab_config", None)
    return config if isinstance(config, ModelConfig) else None


def set_model_config(model: nn.Module, config: ModelConfig) -> nn.Module:
    """Put ``config`` on ``model`` (as ``cnnlab_config``, and as timm's ``pretrained_cfg`` dict); returns it."""
    model.cnnlab_config = config
    model.pretrained_cfg = config.as_dict()
    if config.num_features is not None:
        model.num_features = config.num_features
    model.num_classes = config.num_classes
    return model


def create_model(name: str, num_classes: int | None = None, in_chans: int | None = None, *,
                 pretrained: bool | None = None, **kwargs) -> nn.Module:
    """Build a registered model with fresh weights; it carries its :class:`ModelConfig` (``model.cnnlab_config``).

    ``None`` means the card's default (its paper's classes and channels). ``num_classes=0`` builds the model
    without its classifier (timm's convention): it returns pooled features, ``model.num_features`` of them, and
    has no auxiliary classifiers. ``kwargs`` are the model's options (``cnnlab card NAME`` lists them). Weights
    are loaded by :func:`cnnlab.create_model` (``pretrained=True``, a weights tag or a path), which builds
    through this function.
    """
    if pretrained:
        raise CnnlabError("cnnlab.models.create_model builds architectures with fresh weights; load weights with "
                          "cnnlab.create_model(name, pretrained=...)", params=("pretrained",))
    entry = _lookup(name)
    card = entry.card
    num_classes = card.num_classes if num_classes is None else num_classes
    in_chans = card.input_size[0] if in_chans is None else in_chans
    headless = num_classes == 0 and not isinstance(num_classes, bool)
    # num_classes is a flag of the command line (--num-classes); in_chans is not (it comes from the data)
    for what, value, most, says in (("num_classes", card.num_classes if headless else num_classes, MAX_CLASSES, 1),
                                    ("in_chans", in_chans, MAX_IN_CHANS, 0)):
        said = f"`{what}`" if says else what
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            zero = ", or 0 for the model without its classifier" if what == "num_classes" else ""
            raise CnnlabError(f"{said} must be a positive whole number{zero}, got {value!r}", params=(what,)[:says])
        if value > most:
            raise CnnlabError(f"{said} is {value:,}; cnnlab builds at most {most:,} (ImageNet-21k has 21,841 "
                              f"classes, a hyperspectral image a few hundred channels)", params=(what,)[:says])
    params = inspect.signature(entry.builder).parameters
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        options = [p for p in params if p not in ("num_classes", "in_chans")]
        accepted = ", ".join(options) if options else "no other options"
        raise CnnlabError(f"model {name!r} has no option {unknown[0]!r}; it accepts: {accepted}")
    for key, value in kwargs.items():
        _check_option(name, key, value, params[key].default)
    given = dict(kwargs)
    if headless and "aux_logits" in params:
        if kwargs.get("aux_logits"):
            raise CnnlabError(f"{card.name} without its classifier (`num_classes`=0) has no auxiliary classifiers "
                              f"either; leave aux_logits out", params=("num_classes",))
        kwargs["aux_logits"] = False
    model = entry.builder(num_classes=card.num_classes if headless else num_classes, in_chans=in_chans, **kwargs)
    features = _remove_classifier(model, card.name, kwargs, in_chans) if headless else None
    config = ModelConfig(card.name, 0 if headless else num_classes, in_chans, (in_chans, *card.input_size[1:]),
                         given, num_features=features)
    return set_model_config(model, config)


def _remove_classifier(model: nn.Module, name: str, options: dict, in_chans: int) -> int:
    """Replace the main classifier by the identity, as timm does for ``num_classes=0``; the width of the features
    the model now returns."""
    from torch import nn

    _replace(model, head_names(model, name, **options)[-1], nn.Identity())
    return _feature_width(name, tuple(sorted(options.items())), in_chans)


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@functools.lru_cache(maxsize=64)
def _feature_width(name: str, options: tuple, in_chans: int) -> int:
    """The shape of the headless model's output, from a copy built and run on the meta device (no memory, no
    arithmetic)."""
    import torch
    from torch import nn

    entry = _lookup(name)
    with meta_without_init():
        probe = entry.builder(num_classes=entry.card.num_classes, in_chans=in_chans, **dict(options)).eval()
        _replace(probe, head_names(probe, name, **dict(options))[-1], nn.Identity())
        with torch.no_grad():
            shape = probe(torch.zeros(1, in_chans, *entry.card.input_size[1:])).shape
    if len(shape) != 2:
        raise CnnlabError(f"{name} without its classifier returns {tuple(shape)}, not pooled features")
    return int(shape[1])


def head_keys(name: str, **options) -> set[str]:
    """The state_dict keys that depend on the class count: every classifier head, auxiliary ones included.
    Found by building the model for two class counts on the meta device and comparing shapes."""
    return set(_head_keys(canonical_name(name), tuple(sorted(options.items()))))


@functools.lru_cache(maxsize=64)
def _head_keys(name: str, options: tuple) -> frozenset[str]:
    entry = _lookup(name)
    with meta_without_init():
        a = entry.builder(num_classes=7, **dict(options)).state_dict()
        b = entry.builder(num_classes=11, **dict(options)).state_dict()
    return frozenset(k for k in a if k in b and a[k].shape != b[k].shape)


def head_names(model: nn.Module, name: str | None = None, **options) -> list[str]:
    """Names of ``model``'s classifier modules, auxiliary ones first and the main head last. ``name`` and
    ``options`` default to the model's own config."""
    if name is None:
        config = model_config(model)
        if config is None:
            raise CnnlabError(f"this {type(model).__name__} was not built by cnnlab.create_model; give the model's "
                              f"name", params=("name",))
        name, options = config.name, {**config.options, **options}
    keys = head_keys(name, **options)
    mods = {k.rsplit(".", 1)[0] for k in keys}
    order = [n for n, _ in model.named_modules() if n in mods]
    return sorted(order, key=lambda n: (not is_auxiliary(n), order.index(n)))


def is_auxiliary(key: str) -> bool:
    """Whether a module or state_dict key belongs to an auxiliary classifier (GoogLeNet's aux1, Inception's
    AuxLogits)."""
    return key.split(".", 1)[0].lower().startswith("aux")


@contextmanager
def meta_without_init():
    """Build models only to look at their shapes: on the meta device (no memory) and without initialising them
    (torch.nn.init's functions leave the tensor as it is): initialising on meta runs torch's Python reference
    kernels, about 2 ms a call, 10+ s for the zoo."""
    import torch

    init = torch.nn.init
    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_") and callable(getattr(init, n))]
    saved = {n: getattr(init, n) for n in names}
    try:
        for n in names:
            setattr(init, n, lambda tensor, *args, **kwargs: tensor)
        with torch.device("meta"):
            yield
    finally:
        for n, f in saved.items():
            setattr(init, n, f)


# What a model may be asked to build: at most this many classes and input channels (a layer of 4096 x 100,000
# is 1.6 GB of fp32 weights).
MAX_CLASSES, MAX_IN_CHANS = 100_000, 10_000
# Options that are probabilities, in every family that has them: a rate in [0, 1) (dropout 1 would zero every
# activation; a drop-path rate of 1 would drop every block). FractalNet's ``global_ratio`` is a share of the
# mini-batches, so 1 is allowed; its ``dropout`` is one rate per block.
RATES = {"dropout", "drop_rate", "drop_path_rate", "local_drop_prob"}
SHARES = {"global_ratio"}


def _check_option(name: str, key: str, value, default) -> None:
    """The checks every family's options share: a value of the default's kind, and a rate within [0, 1)."""
    def say(what: str) -> CnnlabError:
        return CnnlabError(f"`model_options` {key}={value!r} of {name} {what}", params=("model_options",))

    def is_number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if default is not None:
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = is_number(value)
        elif isinstance(default, (tuple, list)):
            ok = isinstance(value, (tuple, list))
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise say(f"must be a {type(default).__name__} like the default {key}={default!r}")
    if key in RATES | SHARES and value is not None:
        interval = "[0, 1]" if key in SHARES else "[0, 1)"
        many = isinstance(value, (tuple, list))
        for v in value if many else (value,):
            if not is_number(v) or not (0 <= v < 1 or (key in SHARES and v == 1)):
                raise say(f"needs {'rates' if many else 'a rate'} in {interval}, e.g. {key}=0.2")


def _ensure_loaded() -> None:
    # Importing the families runs their @register_model decorators.
    import importlib

    from cnnlab.models import FAMILIES

    for family in FAMILIES:
        importlib.import_module(f"cnnlab.models.{family}")


def coerce_model_options(name: str, items: list[str]) -> dict:
    """``["shortcut=A", "drop_path_rate=0.2"]`` -> ``{"shortcut": "A", "drop_path_rate": 0.2}``: options written
    as text (a command line, a web form), checked against the options the model's builder accepts and the
    types of their defaults. Values are Python literals (numbers, True/False/None, tuples) or bare words."""
    import ast

    if not items:
        return {}
    accepted = model_options(name)
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise CnnlabError(f"`model_options` {item!r} is not KEY=VALUE, e.g. `model_options` drop_path_rate=0.2",
                              params=("model_options",))
        if key not in accepted:
            listed = ", ".join(accepted) or "no options"
            raise CnnlabError(f"model {name!r} has no option {key!r}; it accepts: {listed}")
        try:
            value = ast.literal_eval(text.strip()) if len(text) <= 1000 else text.strip()  # never runs code
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            value = text.strip()  # a bare word: a string, e.g. shortcut=A
        default = accepted[key]
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) and (default is None or isinstance(default, bool))
        elif isinstance(default, float) and isinstance(value, int):
            value, ok = float(value), True
        elif isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
            value, ok = type(default)(value), True
        else:
            ok = default is None or isinstance(value, type(default))
        if not ok:
            raise CnnlabError(f"`model_options` {key}={text} is not a {type(default).__name__} like the default "
                              f"{key}={default!r}", params=("model_options",))
        out[key] = value
    return out
