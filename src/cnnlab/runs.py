"""The typed run: what a run folder holds, and one way to open it.

A run folder (written by ``cnnlab train``)::

    config.json    every resolved setting, versions, hardware
    metrics.jsonl  one line per epoch, and one every ``log_every`` steps
    curves.png     loss and accuracy, training and evaluation
    last.pt        the latest checkpoint; best.pt: the one with the best evaluation accuracy
    summary.md     what was trained, on what, how well and how fast

A checkpoint holds a :class:`RunInfo` (what was trained, on which images, prepared how: plain data), the
model's weights, and the training state a resumed run needs (optimiser, schedule, epoch, step, RNG, history).
Everything that opens a finished run (evaluation, pictures, transfer, fidelity) asks :func:`open_run` for a
:class:`Run`; nothing else reads checkpoint keys. Checkpoints are loaded with ``torch.load(weights_only=True)``:
opening one never runs code from it. Those written before :class:`RunInfo` existed (format 1) still open.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from cnnlab.data.view import DataView
from cnnlab.errors import CnnlabError, CnnlabNote
from cnnlab.fileio import atomic_save, load_torch

FORMAT = "cnnlab-checkpoint-3"
FORMAT_2 = "cnnlab-checkpoint-2"  # as 3, but model names from before the naming rule ("googlenet": the paper's)
FORMAT_1 = "cnnlab-checkpoint-1"  # model name, classes, data, recipe, ... as top-level keys


@dataclass(frozen=True)
class RunInfo:
    """What a run trained, on which images, prepared how."""

    model: str
    classes: tuple[str, ...]
    in_chans: int
    input_size: tuple[int, int, int]  # the model card's C x H x W (image folders are resized to it)
    data: str  # "mnist", ..., or "folder:PATH"
    model_options: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)  # the recipe's settings as trained (Recipe.as_dict)
    eval_split: str = "test"  # what the run evaluated on while training: "test" or "val"
    seed: int = 0
    precision: str = "fp32"
    train_limit: int | None = None
    config: dict = field(default_factory=dict)  # the training configuration as given (for --resume)
    untrained: bool = False  # a registered model's initial weights, not a run

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def view(self) -> DataView:
        """The images the run saw, prepared as its network reads them."""
        augment = dict(self.recipe.get("augment") or {})
        if self.untrained:  # smaller images (MNIST's 28x28 for LeNet-5's 32x32) centred on the input size
            augment["pad_to"] = self.input_size[-1]
        return DataView(self.data, self.in_chans, self.input_size[1], augment, self.recipe.get("val_split") or None,
                        self.seed, self.train_limit)

    def build(self, **kwargs):
        """The run's architecture with fresh weights (``kwargs``: e.g. nothing, or under a meta device)."""
        from cnnlab.models.registry import create_model

        return create_model(self.model, num_classes=self.num_classes, in_chans=self.in_chans,
                            **self.model_options, **kwargs)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["classes"], d["input_size"] = list(self.classes), list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunInfo:
        """The info as saved; a KeyError or TypeError when a part that opening a run needs is missing or of the
        wrong kind (an edited or foreign file)."""
        for key, kind in (("model", str), ("classes", list), ("in_chans", int), ("input_size", list),
                          ("data", str), ("recipe", dict)):
            if key not in d:
                raise KeyError(key)
            if not isinstance(d[key], kind):
                raise TypeError(f"{key} is a {type(d[key]).__name__}, not a {kind.__name__}")
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        return cls(**{**d, "classes": tuple(d["classes"]), "input_size": tuple(d["input_size"])})

    @classmethod
    def untrained_model(cls, name: str) -> RunInfo:
        """A registered model as built, before training: its card's classes and input, image-folder
        preprocessing (resize, centre crop, ImageNet normalisation)."""
        from cnnlab.models.registry import model_card

        card = model_card(name)
        return cls(card.name, tuple(str(i) for i in range(card.num_classes)), card.input_size[0],
                   tuple(card.input_size), "folder:", untrained=True)

    @classmethod
    def from_format_1(cls, state: dict) -> RunInfo:
        config = state.get("config") or {}
        return cls(state["model_name"], tuple(state["classes"]), state["in_chans"], tuple(state["input_size"]),
                   state["data"], dict(state.get("model_options") or {}), dict(state.get("recipe") or {}),
                   state.get("eval_split", "test"), config.get("seed", 0), state.get("precision", "fp32"),
                   config.get("train_limit"), dict(config))


def resolve(path: str | os.PathLike) -> Path:
    """A run folder (its last.pt) or a checkpoint file."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "last.pt"
    if not p.is_file():
        from cnnlab.models.registry import is_model

        if not p.exists() and is_model(str(path)):
            raise CnnlabError(f"{path} is a model, not a trained run: give a run folder (with last.pt) or a .pt file "
                              f"(`cnnlab train {path}` makes one)")
        raise CnnlabError(f"no checkpoint at {p}; give a run folder (with last.pt) or a .pt file")
    return p


def save_checkpoint(path: Path, info: RunInfo, model_state: dict, training: dict) -> None:
    """Atomically: a kill at any moment leaves the previous checkpoint or this one, never half of either."""
    atomic_save({"format": FORMAT, "info": info.as_dict(), "model": model_state, **training}, path)


def as_checkpoint(obj, where) -> dict | None:
    """A loaded object as a checkpoint of the current format (format 1 converted), or None if it is none."""
    if not isinstance(obj, dict) or obj.get("format") not in (FORMAT, FORMAT_2, FORMAT_1):
        return None
    try:
        if obj["format"] == FORMAT_1:
            old = {"model_name", "model_options", "num_classes", "in_chans", "input_size", "classes", "data",
                   "config", "recipe", "eval_split", "precision"}
            info = RunInfo.from_format_1(obj)
            obj = {k: v for k, v in obj.items() if k not in old}
            obj["schedule"] = {"plateau": obj.pop("plateau", None)}
        else:
            info = RunInfo.from_dict(obj["info"])
        if "model" not in obj:
            raise KeyError("model")
        info = _renamed(info, old=obj["format"] != FORMAT)
    except (KeyError, TypeError, ValueError) as e:
        raise CnnlabError(f"{where} is a cnnlab checkpoint with parts missing ({type(e).__name__}: {e}); it was "
                          f"not written by cnnlab train, or was edited; train again or use another checkpoint") \
            from None
    return {**obj, "format": FORMAT, "info": info}


def _renamed(info: RunInfo, old: bool) -> RunInfo:
    """The info with its model under today's name: old names are aliases (resnet50_v1 -> resnet50_paper), and
    in checkpoints written before the naming rule "googlenet" was the paper's build, now googlenet_paper."""
    from cnnlab.models.registry import ALIASES, RENAMED

    name = (RENAMED.get(info.model) if old else None) or ALIASES.get(info.model, info.model)
    return info if name == info.model else replace(info, model=name)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The checkpoint of a run folder or file: ``info`` (a :class:`RunInfo`), ``model`` (its state_dict) and
    the training state (``optimizer``, ``scaler``, ``schedule``, ``epoch``, ``step``, ``best_top1``,
    ``history``, ``rng``)."""
    p = resolve(path)
    ckpt = as_checkpoint(load_torch(p, "checkpoint", map_location), p)
    if ckpt is None:
        raise CnnlabError(f"{p} is not a cnnlab checkpoint (it has no {FORMAT!r} marker)")
    return ckpt


@dataclass
class Run:
    """An opened run: its trained model (in eval mode), what it is, how it went, where it lies."""

    model: object  # torch.nn.Module
    info: RunInfo
    history: list[dict]  # one record per epoch, as in metrics.jsonl
    checkpoint: Path | None  # the file the weights came from
    folder: Path | None  # the run folder, if the checkpoint lies in one

    @property
    def name(self) -> str:
        return self.info.model + (" (untrained)" if self.info.untrained else "")


def open_run(path: str | os.PathLike) -> Run:
    """A run folder (its last.pt) or a checkpoint file, opened: the model with the trained weights."""
    ckpt = load_checkpoint(path)
    info, file = ckpt["info"], resolve(path)
    model = info.build()
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CnnlabError(f"{file} does not fit {info.model} with {info.num_classes} classes "
                          f"({str(e).splitlines()[0]})") from None
    bad = next((k for k, t in ckpt["model"].items() if t.is_floating_point() and not t.isfinite().all()), None)
    if bad is not None:  # the trainer never saves such weights (a loss that is not finite stops it): edited?
        raise CnnlabError(f"{file} holds weights that are not finite (NaN or infinite, first in {bad}); nothing it "
                          f"computes would mean anything: use the run's best.pt or an earlier checkpoint")
    folder = file.parent if (file.parent / "config.json").is_file() else None
    _remember_weights(model, info, str(file))
    return Run(model.eval(), info, list(ckpt.get("history") or []), file, folder)


def _remember_weights(model, info: RunInfo, source: str) -> None:
    """The model's config says where its weights came from and how its inputs are normalised."""
    from cnnlab.models.registry import model_config, set_model_config

    try:
        mean, std = (tuple(v) for v in info.view.stats())
    except CnnlabError:  # a dataset this cnnlab does not know: the weights still open, without their statistics
        mean = std = None
    set_model_config(model, replace(model_config(model), weights=source, mean=mean, std=std))


def open_model(source: str) -> Run:
    """A run folder or checkpoint, or a registered model's name: its initial weights (seed 0), to see what a
    network looks like before training."""
    import torch

    from cnnlab.models.registry import is_model

    is_path, is_name = Path(source).expanduser().exists(), is_model(source)
    if is_path and is_name:  # both: the path wins, and says so
        warnings.warn(CnnlabNote(f"{source} is both a model name and a path here; opening the path ./{source} (for "
                                 f"the untrained model, run from another folder)"))
    if is_name and not is_path:
        info = RunInfo.untrained_model(source)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = info.build().eval()
        return Run(model, info, [], None, None)
    return open_run(source)
