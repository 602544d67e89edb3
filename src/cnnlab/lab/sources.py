"""What the lab can open, each named by an id from the server's own listing; a path from the client is never
opened. Three kinds:

- ``r-<hash>``: a run folder under ``--runs`` (any depth up to 4; symlinks that lead out of it are not
  followed). A folder being written (no checkpoint yet) or a corrupt one is listed with its problem.
- ``tv-<model>``: a registered model with torchvision's ImageNet weights (from torch's cache, or downloaded).
- ``model-<model>``: a registered model's untrained weights (seed 0), to see a network before training.

Opened models are kept in an LRU cache bounded by count and by bytes of weights, so a page that asks for ten
views of one run loads it once, and browsing twenty runs does not fill the memory.
"""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.fileio import read_jsonl
from cnnlab.lab.web import LabError

MAX_DEPTH = 4
CACHE_MODELS = 4
CACHE_BYTES = 2 * 2**30


@dataclass
class Entry:
    """One thing the lab can open."""

    id: str
    kind: str  # run | torchvision | model
    label: str  # what the page shows: the run folder relative to --runs, or the model's name
    model: str
    data: str | None = None  # the dataset a run trained on
    problem: str | None = None  # why it cannot be opened (yet)
    epochs: int | None = None
    top1: float | None = None  # percent, on the run's evaluation split after its last epoch
    path: Path | None = field(default=None, repr=False)  # the server's only: never sent, never taken from a client
    stamp: float = 0.0  # the checkpoint's mtime: a newer one is opened again

    def as_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "label": self.label, "model": self.model, "data": self.data,
                "problem": self.problem, "epochs": self.epochs, "top1": self.top1}


def run_id(relative: str) -> str:
    return "r-" + hashlib.sha1(relative.encode()).hexdigest()[:10]


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except OSError:
        return False


def _describe(folder: Path, root: Path) -> Entry:
    rel = folder.relative_to(root).as_posix() or "."
    entry = Entry(run_id(rel), "run", rel, "?", path=folder)
    try:
        config = json.loads((folder / "config.json").read_text())
        entry.model = str(config.get("model") or config.get("name") or "?")
        entry.data = config.get("data")
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        entry.problem = "its config.json cannot be read (cut short or edited)"
    ckpt = folder / "last.pt"
    if ckpt.is_symlink() and not _inside(ckpt, root):
        entry.problem = "its last.pt is a link out of --runs; the lab does not follow it"
    elif not ckpt.is_file():
        entry.problem = entry.problem or "no checkpoint yet (a training still writing its first epoch?)"
    else:
        entry.stamp = ckpt.stat().st_mtime
    epochs = [r for r in read_jsonl(folder / "metrics.jsonl") if r.get("kind") == "epoch"]
    try:
        if epochs:
            entry.epochs, entry.top1 = int(epochs[-1]["epoch"]), epochs[-1].get("eval_top1")
    except (ValueError, TypeError, KeyError):
        pass  # metrics are a nicety for the listing; a run without them still opens
    return entry


class Sources:
    """The listing and the model cache of one server."""

    def __init__(self, runs: Path | None):
        self.root = runs
        self._entries: dict[str, Entry] = {}
        self._problems: dict[str, str] = {}  # runs that failed to open: listed with the reason
        self._cache: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple, threading.Lock] = {}
        self._data: dict[tuple, object] = {}

    # ------------------------------------------------------------------------------------------------ listing
    def scan(self) -> list[Entry]:
        """The run folders under ``--runs``, found again on every call (a training may have started)."""
        found = []
        if self.root is not None:
            stack = [(self.root, 0)]
            while stack:
                folder, depth = stack.pop()
                try:
                    children = sorted(folder.iterdir())
                except OSError:
                    continue
                names = {c.name for c in children}
                if {"config.json", "last.pt"} & names:
                    found.append(_describe(folder, self.root))
                    continue
                if depth < MAX_DEPTH:
                    stack += [(c, depth + 1) for c in reversed(children)
                              if c.is_dir() and not c.name.startswith(".") and _inside(c, self.root)]
        for e in found:
            e.problem = e.problem or self._problems.get(e.id)
        with self._lock:
            self._entries.update({e.id: e for e in found})
        return sorted(found, key=lambda e: e.label)

    def torchvision(self) -> list[Entry]:
        from cnnlab.transfer.weights import TORCHVISION_WEIGHTS

        return [Entry(f"tv-{name}", "torchvision", f"{name} (torchvision ImageNet weights)", name, "imagenet")
                for name in TORCHVISION_WEIGHTS]

    def entry(self, source_id: str) -> Entry:
        """The entry with this id; the id is looked up, never read as a path."""
        if not isinstance(source_id, str) or not source_id:
            raise LabError("the request needs a `source` (a run's id from the lab's list)")
        if source_id.startswith("r-"):
            e = self._entries.get(source_id)
            if e is None:
                self.scan()
                e = self._entries.get(source_id)
            if e is not None and e.path is not None and e.path.exists():
                return e
            raise LabError(f"no run with id {source_id!r} under --runs (it may have been deleted); reload the "
                           f"list", 404)
        from cnnlab.models.registry import canonical_name, is_model

        kind, _, name = source_id.partition("-")
        if kind in ("tv", "model") and is_model(name):
            name = canonical_name(name)
            if kind == "tv":
                from cnnlab.transfer.weights import TORCHVISION_WEIGHTS

                if name not in TORCHVISION_WEIGHTS:
                    raise LabError(f"{name} has no torchvision weights; those are for "
                                   f"{', '.join(TORCHVISION_WEIGHTS)}", 404)
                return Entry(f"tv-{name}", "torchvision", name, name, "imagenet")
            return Entry(f"model-{name}", "model", f"{name} (untrained)", name)
        raise LabError(f"no source {source_id!r}: use an id from the lab's list (r-..., tv-MODEL or model-MODEL)",
                       404)

    # ------------------------------------------------------------------------------------------------ opening
    def open(self, source_id: str):
        """The source's :class:`~cnnlab.runs.Run` (model in eval mode), from the cache when it is there."""
        e = self.entry(source_id)
        if e.kind == "run" and e.problem:  # look again: a training may have written its first checkpoint since
            self._problems.pop(e.id, None)
            self.scan()
            e = self._entries.get(source_id, e)
            if e.problem:
                raise LabError(f"the run {e.label} cannot be opened: {e.problem}", 409)
        key = (e.id, e.stamp)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:  # two requests for one run load it once
            with self._lock:
                if key in self._cache:
                    return self._cache[key]
            run = self._load(e)
            with self._lock:
                self._cache[key] = run
                self._evict()
                self._loading.pop(key, None)
            return run

    def _load(self, e: Entry):
        run = self._open(e)
        run.model.to(lab_device())
        return run

    def _open(self, e: Entry):
        from cnnlab.runs import open_model, open_run

        if e.kind == "run":
            try:
                run = open_run(e.path)
            except CnnlabError as err:
                reason = str(err).replace(str(e.path), e.label)
                self._problems[e.id] = f"it failed to open: {reason}"
                raise LabError(f"the run {e.label} cannot be opened: {reason}") from None
            self._problems.pop(e.id, None)
            return run
        if e.kind == "model":
            return open_model(e.model)
        return _torchvision_run(e.model)

    def _evict(self) -> None:
        def size(run) -> int:
            return sum(p.numel() * p.element_size() for p in run.model.parameters())

        while len(self._cache) > CACHE_MODELS or (len(self._cache) > 1
                                                  and sum(size(r) for r in self._cache.values()) > CACHE_BYTES):
            self._cache.popitem(last=False)

    def cached(self) -> list[str]:
        with self._lock:
            return [k[0] for k in self._cache]

    # ------------------------------------------------------------------------------------------------ images
    def images(self, source_id: str, split: str = "test"):
        """The evaluation images of the source's dataset (:class:`~cnnlab.data.view.OpenedData`), opened once;
        a CnnlabError with the way out when the dataset is not on this machine."""
        from cnnlab.data.view import open_data

        run = self.open(source_id)
        view = run.info.view
        if run.info.untrained or not view.data or view.data in ("folder:", "imagenet"):
            raise LabError(f"{run.name} has no evaluation images of its own here; upload an image instead")
        key = (repr(view), split)  # a DataView holds its augment dict: not hashable itself
        with self._lock:
            if key in self._data:
                return self._data[key]
        data = open_data(view, split, batch_size=256)
        with self._lock:
            self._data[key] = data
        return data


_DEVICE = []


def lab_device():
    """Where the lab runs its models: the device ``cnnlab`` would choose (a CUDA GPU when one is visible)."""
    if not _DEVICE:
        from cnnlab.platform import resolve_device

        _DEVICE.append(resolve_device("auto"))
    return _DEVICE[0]


def on_model(model, x):
    """A tensor moved to the model's device (the lab's models may sit on a GPU; images come from the CPU)."""
    first = next(model.parameters(), None)
    return x if first is None else x.to(first.device)


_MODEL_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MODEL_LOCKS_LOCK = threading.Lock()


def model_lock(model) -> threading.Lock:
    """One lock per opened model, for every page: a view puts hooks on the model's modules, so two views of one
    model at once (two tabs, the explorer and the digit page on one run) would read each other's outputs; each
    takes milliseconds to a second, so they take turns. Long jobs (top-9 over a test set) work on a copy."""
    with _MODEL_LOCKS_LOCK:
        if model not in _MODEL_LOCKS:
            _MODEL_LOCKS[model] = threading.Lock()
        return _MODEL_LOCKS[model]


def _torchvision_run(name: str):
    """A registered model with torchvision's ImageNet weights, opened as a run: ImageNet's classes, the
    image-folder preprocessing (resize, centre crop, ImageNet normalisation)."""
    from dataclasses import replace

    import torchvision.models as tvm

    from cnnlab.runs import Run, RunInfo
    from cnnlab.transfer.weights import TORCHVISION_WEIGHTS, create_model

    model = create_model(name, pretrained=True).eval()
    categories = getattr(tvm, TORCHVISION_WEIGHTS[name]).DEFAULT.meta["categories"]
    info = replace(RunInfo.untrained_model(name), classes=tuple(categories), untrained=False)
    return Run(model, info, [], None, None)


def _list(lab, request) -> dict:
    runs = lab.sources.scan()
    return {"runs": [e.as_dict() for e in runs], "torchvision": [e.as_dict() for e in lab.sources.torchvision()],
            "root": lab.runs.name if lab.runs else None}


def _source(lab, request) -> dict:
    """What the pages need to show a source: its classes, input, layers, the default Grad-CAM layer."""
    from cnnlab.visualize.filters import conv_layers
    from cnnlab.visualize.layers import gradcam_layer

    e = lab.sources.entry(request.path_params["source"])
    run = lab.sources.open(e.id)
    info = run.info
    input_size = tuple(info.input_size)
    return {**e.as_dict(), "name": run.name, "classes": list(info.classes), "input_size": list(input_size),
            "in_chans": info.in_chans, "data": info.data, "model_options": info.model_options,
            "conv_layers": conv_layers(run.model), "gradcam_layer": gradcam_layer(run.model, input_size),
            "history": run.history}


def routes():
    from starlette.routing import Route

    from cnnlab.lab.web import api

    return [Route("/api/sources", api(_list)), Route("/api/sources/{source}", api(_source))]

