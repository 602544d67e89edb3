"""Watching a run learn, from outside the process: what the trainer records beside its checkpoints so that a
page (``cnnlab serve``'s training view) can show the run's health and its pictures as it trains, and the one
thing such a page may change, the learning rate.

The run folder gains (formats: docs/architecture.md, "Watching a run"):

- ``health.jsonl``: every ``health_every`` steps, per learnable layer (a ``weight`` of 2 dimensions or more:
  convolutions and linear layers) the norm of its weight gradient, of its weight, the relative size of this
  step's update, and the fraction of the following ReLU's outputs that are exactly 0 ("dead"). Measured on
  that step only (the weights are copied before it, hooks are on for its forward pass alone), so the cost is
  a few small reductions every ``health_every`` steps.
- ``snapshots/``: a fixed probe batch of evaluation images (``probe.npz``), and at a schedule of steps (0, 10,
  20, 50, 100, 200, 500, ... , every ``snapshot_every`` steps, each epoch's end) the first convolution's
  filters, the probe batch's activations at up to six convolutions spread over the depth and, at epoch ends,
  the confusion matrix of the evaluation pass the trainer runs anyway. Each file is written atomically and
  listed in ``index.jsonl`` only once it exists.
- ``control.json`` (written by the lab, read here): ``{"lr": {"value", "id"}}`` sets the learning rate from
  the next step on, as a factor on the schedule; the change is logged in metrics.jsonl, kept in config.json
  and in the checkpoint's schedule, and a resumed run applies it again at the same step.

None of it changes training: the probe pass runs in eval mode without gradients and puts every module's mode
and the random generators back, so a ``deterministic`` run ends with the same weights with all of it on or
off. A resumed run first drops what the killed process recorded after its checkpoint (as metrics.jsonl's
lines are dropped). Under data parallelism rank 0 records; the ranks agree on learning-rate changes.
"""

from __future__ import annotations

import json
import math
import os
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlab.fileio import atomic_open, atomic_write_json, atomic_write_text

HEALTH, SNAPSHOTS, CONTROL = "health.jsonl", "snapshots", "control.json"
PROBE_IMAGES = 8  # the probe batch
MOST_STAGES = 6  # layers whose probe activations a snapshot keeps
MOST_CHANNELS = 16  # of each of them, the first channels
RELUS = (nn.ReLU, nn.ReLU6)  # activations whose exact zeros mean "dead"; functional F.relu cannot be hooked
_SNAPSHOT = re.compile(r"step-(\d+)\.npz$")


def snapshot_due(step: int, every: int) -> bool:
    """Whether step ``step`` (optimiser steps done) gets a snapshot: step 0, then 10, 20, 50, 100, 200, 500, ...
    (dense early, when the filters change fastest), and every ``every`` steps."""
    if step == 0 or (every and step % every == 0):
        return True
    m = step
    while m % 10 == 0:
        m //= 10
    return step >= 10 and m in (1, 2, 5)


def snapshot_name(step: int) -> str:
    return f"step-{step:08d}.npz"


class Watch:
    """What a training run records for watching it, and the learning-rate control. The loop calls
    :meth:`before_step` and :meth:`after_step` around each optimiser step; the epoch's end calls
    :meth:`confusion` (a matrix for :func:`~cnnlab.train.trainer.evaluate` to fill) and :meth:`end_epoch`."""

    def __init__(self, cfg, folder, t, eval_data, config: dict):
        """Set up before the run folder's config.json is written (``config``, which this updates with the
        learning-rate changes a resumed run goes on with): read those changes back; :meth:`start` does the rest."""
        self.folder, self.dist, self.config = folder, t.dist, config
        self.main = folder.main
        self.health_every = cfg.health_every if self.main else 0
        steps_per_epoch = t.schedule.steps_per_epoch
        self.steps_per_epoch = steps_per_epoch
        self.snapshots = cfg.snapshots
        self.every = cfg.snapshot_every or max(1, steps_per_epoch // 4)
        self.platform, self.num_classes = t.platform, len(eval_data.classes)
        self.hook_relus = not cfg.compile  # hooks added to a compiled model would recompile it
        self.control = folder.path / CONTROL
        self._seen = None  # control.json's (mtime, size) last read
        self._before: list[torch.Tensor] | None = None  # weights before a recorded step
        self._dead: dict[str, torch.Tensor] = {}
        self._hooks: list = []
        self._scale = 1.0
        t.schedule.changes = self._lr_changes(cfg, t)
        self.applied = {c.get("id") for c in t.schedule.changes}
        self.replay = {}  # changes recorded past the checkpoint: logged again when reached
        for c in t.schedule.changes:
            if c["step"] >= t.step and not folder.new:
                self.replay.setdefault(c["step"], []).append(c)
        config["lr_changes"] = [dict(c) for c in t.schedule.changes]
        self.layers = [(n, m) for n, m in t.model.named_modules()  # the learnable layers, in model order
                       if isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.dim() >= 2
                       and m.weight.requires_grad]
        self.probe = self.filters = None
        self.stages: list[tuple[str, nn.Module]] = []
        self._eval_data, self._seed = eval_data, cfg.seed

    def start(self, t) -> None:
        """Once config.json is written (a run folder says what it is before anything else lands in it): drop
        the records a killed process left after its checkpoint, save the probe batch, take the snapshot of
        step 0."""
        if not self.main:
            return
        kept = t.step if t.step else -1  # a new run keeps nothing (its step 0 is taken again)
        if self.health_every:
            truncate_jsonl(self.folder.path / HEALTH, kept)
        if self.snapshots:
            self.dir = self.folder.path / SNAPSHOTS
            self.dir.mkdir(exist_ok=True)
            truncate_snapshots(self.dir, kept)
            self._probe(t, self._eval_data, self._seed)
            if t.step == 0:
                self._snapshot(t, 0, 0)

    # -- the loop's calls --------------------------------------------------------------------------------------

    def before_step(self, t, epoch: int) -> None:
        """Before optimiser step ``t.step`` + 1: apply a learning-rate change asked for in control.json (or
        log again one a resumed run replays); on a recorded step, copy the weights and hook the ReLUs."""
        self._lr_control(t, epoch)
        if self.health_every and (t.step + 1) % self.health_every == 0:
            self._before = [m.weight.detach().clone() for _, m in self.layers]
            self._scale = self._grad_scale(t)
            if self.hook_relus:
                self._hook(t.model)

    def after_step(self, t, epoch: int) -> None:
        """After the step: the health line of a recorded step, and a snapshot when the schedule says so (not
        at an epoch's last step: :meth:`end_epoch` takes that one, with the confusion matrix)."""
        if self._before is not None:
            self._unhook()
            self.folder.write_line(HEALTH, self._health(t.step, epoch + 1))
            self._before, self._dead = None, {}
        if self.snapshots and self.main and t.step % self.steps_per_epoch and snapshot_due(t.step, self.every):
            self._snapshot(t, t.step, epoch + 1)

    def confusion(self) -> torch.Tensor | None:
        """An empty confusion matrix (rows: true class, columns: predicted) for the evaluation pass to fill,
        or None when no snapshots are taken."""
        return torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64) if self.snapshots else None

    def end_epoch(self, t, epoch: int, confusion: torch.Tensor | None) -> None:
        """The epoch's snapshot, with its confusion matrix (before the checkpoint: a run killed between the two
        resumes from the previous checkpoint, which drops it)."""
        if self.snapshots and self.main:
            self._snapshot(t, t.step, epoch + 1, confusion)

    def close(self) -> None:
        self._unhook()

    # -- health --------------------------------------------------------------------------------------------------

    def _hook(self, model: nn.Module) -> None:
        """Forward hooks for one pass: each ReLU's share of exact zeros, credited to the learnable layer that
        ran last before it (its first ReLU)."""
        self._names, self._last = {id(m): n for n, m in self.layers}, None
        for m in model.modules():
            if id(m) in self._names:
                self._hooks.append(m.register_forward_hook(self._layer_ran))
            elif isinstance(m, RELUS):
                self._hooks.append(m.register_forward_hook(self._relu_ran))

    def _layer_ran(self, module, args, output) -> None:
        self._last = self._names[id(module)]

    def _relu_ran(self, module, args, output) -> None:
        if self._last is not None and self._last not in self._dead and isinstance(output, torch.Tensor):
            self._dead[self._last] = (output.detach() == 0).float().mean()

    def _unhook(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    @staticmethod
    def _grad_scale(t) -> float:
        """What the gradients are multiplied by when the step reads them: fp16's loss scale, unless the
        gradients are unscaled for clipping."""
        if t.scaler.is_enabled() and not t.recipe.clip_grad_norm:
            return float(t.scaler.get_scale())
        return 1.0

    def _health(self, step: int, epoch: int) -> dict:
        """The health line of this step: the norms taken together, read back in one transfer."""
        rows = []
        for (_, m), before in zip(self.layers, self._before):
            w = m.weight
            grad = torch.linalg.vector_norm(w.grad.float()) if w.grad is not None else w.new_full((), -1.0).float()
            rows.append(torch.stack([grad, torch.linalg.vector_norm(w.detach().float()),
                                     torch.linalg.vector_norm((w.detach() - before).float()),
                                     torch.linalg.vector_norm(before.float())]))
        values = torch.stack(rows).double().cpu().tolist() if rows else []
        dead = {k: float(v) for k, v in self._dead.items()}
        layers = []
        for (name, _), (grad, weight, update, before) in zip(self.layers, values):
            layers.append({"name": name, "grad_norm": _finite(grad / self._scale) if grad >= 0 else None,
                           "weight_norm": _finite(weight),
                           "update_ratio": _finite(update / before) if before > 0 else None,
                           "dead": dead.get(name)})
        return {"step": step, "epoch": epoch, "layers": layers}

    # -- snapshots -----------------------------------------------------------------------------------------------

    def _probe(self, t, data, seed: int) -> None:
        """The probe batch (saved once), the first convolution, and the layers whose activations are kept."""
        shown, labels, indices, x = probe_batch(data, seed)
        if not (self.dir / "probe.npz").exists() or t.step == 0:
            with atomic_open(self.dir / "probe.npz") as f:
                np.savez(f, images=shown, labels=labels, indices=indices)
        x = x.to(self.platform.device, self.platform.dtype)
        self.probe = x.contiguous(memory_format=torch.channels_last) if self.platform.channels_last else x
        convs = stage_layers(t.model, x)
        modules = dict(t.model.named_modules())
        self.filters = modules[next(iter(convs))].weight if convs else None
        spatial = [n for n, shape in convs.items() if len(shape) == 3 and shape[1] * shape[2] > 1]
        if len(spatial) > MOST_STAGES:
            spatial = [spatial[round(i * (len(spatial) - 1) / (MOST_STAGES - 1))] for i in range(MOST_STAGES)]
        self.stages = [(n, modules[n]) for n in spatial]

    def _snapshot(self, t, step: int, epoch: int, confusion: torch.Tensor | None = None) -> None:
        """step-XXXXXXXX.npz (atomically), then its line in index.jsonl."""
        arrays = {"step": np.int64(step), "epoch": np.int64(epoch)}
        if self.filters is not None:
            arrays["filters"] = self.filters.detach().float().cpu().numpy().astype(np.float16)
        for name, act in self._activations(t.model).items():
            arrays[f"act__{name}"] = act
        if confusion is not None:
            arrays["confusion"] = confusion.cpu().numpy().astype(np.int64)
        name = snapshot_name(step)
        with atomic_open(self.dir / name) as f:
            np.savez(f, **arrays)
        self.folder.write_line(f"{SNAPSHOTS}/index.jsonl", {"step": step, "epoch": epoch, "file": name,
                                                            "has_confusion": confusion is not None})

    def _activations(self, model: nn.Module) -> dict[str, np.ndarray]:
        """The probe batch's activations at the stage layers (first channels, float16), from one pass in eval
        mode without gradients that leaves the training untouched: every module's mode and the random
        generators are put back (batch-norm statistics are not updated in eval mode)."""
        if not self.stages:
            return {}
        kept: dict[str, np.ndarray] = {}

        def keep(name):
            def hook(module, args, output):
                if name not in kept and isinstance(output, torch.Tensor):
                    kept[name] = np.ascontiguousarray(
                        output.detach()[:, :MOST_CHANNELS].float().cpu().numpy().astype(np.float16))
            return hook

        device = self.platform.device
        with untouched(model, device), torch.no_grad(), hooks([(m, keep(n)) for n, m in self.stages]), \
                self.platform.autocast():
            model(self.probe)
        return kept

    # -- the learning rate on the fly ---------------------------------------------------------------------------

    def _lr_changes(self, cfg, t) -> list[dict]:
        """The changes a resumed run goes on with: its checkpoint's, and those its config.json recorded after
        that checkpoint (made in the epoch the process died in: they are applied again at the same steps)."""
        changes = [dict(c) for c in t.schedule.changes]
        if self.main and cfg.resume and not self.folder.new:
            from cnnlab.train.rundir import _folder_of

            try:
                recorded = json.loads((_folder_of(cfg.resume) / "config.json").read_text()).get("lr_changes") or []
            except (OSError, ValueError, AttributeError):
                recorded = []
            known = {(c["step"], c.get("id")) for c in changes}
            changes += [dict(c) for c in recorded if isinstance(c, dict) and (c.get("step"), c.get("id")) not in known
                        and isinstance(c.get("step"), int) and isinstance(c.get("factor"), (int, float))]
            changes.sort(key=lambda c: c["step"])  # stable: changes at one step keep their order
        if self.dist.active:
            box = [changes]
            torch.distributed.broadcast_object_list(box, src=0)
            changes = box[0]
        return changes

    def _lr_control(self, t, epoch: int) -> None:
        for c in self.replay.pop(t.step, ()):
            self._log_change(c, t, epoch)
        asked = self._poll() if self.main else None
        if self.dist.active:  # every rank changes at the same step, as rank 0 read it
            box = torch.tensor(asked or (-1, 0.0), dtype=torch.float64, device=self.platform.device)
            torch.distributed.broadcast(box, src=0)
            id, value = box.tolist()
            asked = (int(id), value) if id >= 0 else None
        if asked:
            change = t.schedule.change(t.step, asked[1], asked[0])
            self.applied.add(change["id"])
            self.config["lr_changes"] = [dict(c) for c in t.schedule.changes]
            if self.main:
                atomic_write_json(self.folder.path / "config.json", self.config)
            self._log_change(change, t, epoch)

    def _log_change(self, change: dict, t, epoch: int) -> None:
        self.folder.log({"kind": "lr_change", "epoch": epoch + 1, "step": change["step"],
                         "factor": change["factor"], "lr": t.schedule.lr(change["step"])})

    def _poll(self) -> tuple[int, float] | None:
        """A new request in control.json: (id, value), once per id. One stat() a step; the file is read only
        when its time or size changed. A malformed file is ignored (the lab writes it whole, atomically)."""
        try:
            st = os.stat(self.control)
        except OSError:
            return None
        key = (st.st_mtime_ns, st.st_size)
        if key == self._seen:
            return None
        self._seen = key
        try:
            lr = json.loads(self.control.read_text())["lr"]
            value, id = float(lr["value"]), int(lr["id"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if id in self.applied or id < 0 or not (math.isfinite(value) and value > 0):
            return None
        return id, value


# -- helpers ---------------------------------------------------------------------------------------------------------

def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None  # JSON has no NaN or infinity


def probe_batch(data, seed: int, n: int = PROBE_IMAGES):
    """``n`` evaluation images drawn by ``seed`` (their own generator: the run's random stream is untouched):
    as displayed (uint8 N x H x W x C), their labels, their indices, and the network's input (N x C x H x W)."""
    from cnnlab.data.view import display

    n = min(n, len(data))
    indices = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    if data.view.is_folder:
        pairs = [data.dataset[int(i)] for i in indices]
        x = torch.stack([p[0] for p in pairs])
        labels = torch.tensor([int(p[1]) for p in pairs])
        shown = np.stack([np.rint(display(xi[None], data.view) * 255) for xi in x]).astype(np.uint8)
    else:
        from cnnlab.data.memory import pad_to, preprocess

        ds = data.dataset
        raw = pad_to(ds.images[indices], data.view.pad_to)
        x, labels = preprocess(raw, ds.mean, ds.std), ds.labels[indices]
        shown = raw.permute(0, 2, 3, 1).numpy().astype(np.uint8)
    return shown, labels.numpy().astype(np.int64), indices.numpy().astype(np.int64), x


def stage_layers(model: nn.Module, x: torch.Tensor) -> dict[str, tuple]:
    """The convolutions in the order they run on ``x``, with their output shape per image (one pass in eval
    mode, training left untouched)."""
    names = {id(m): n for n, m in model.named_modules()}
    shapes: dict[str, tuple] = {}

    def hook(module, args, output):
        if isinstance(output, torch.Tensor):
            shapes.setdefault(names[id(module)], tuple(output.shape[1:]))

    device = x.device
    convs = [(m, hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with untouched(model, device), torch.no_grad(), hooks(convs):
        model(x[:1])
    return shapes


@contextmanager
def untouched(model: nn.Module, device: torch.device):
    """Eval mode inside; outside, every module's own mode and the random generators as they were (eval mode
    draws nothing, but a model may: the run's random stream must not move)."""
    modes = [(m, m.training) for m in model.modules()]
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        model.eval()
        try:
            yield
        finally:
            for m, training in modes:
                m.training = training


@contextmanager
def hooks(pairs):
    """Forward hooks (module, hook), removed on the way out whatever happens."""
    handles = [m.register_forward_hook(h) for m, h in pairs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def count_confusion(confusion: torch.Tensor, target: torch.Tensor, predicted: torch.Tensor) -> None:
    """Add a batch to ``confusion`` (K x K, rows: true class, columns: predicted), counted on the CPU (CUDA's
    bincount has no deterministic kernel)."""
    k = confusion.shape[0]
    pairs = (target.long() * k + predicted.long()).cpu()
    confusion += torch.bincount(pairs, minlength=k * k).view(k, k)


# -- a resumed run forgets what the killed process recorded after its checkpoint --------------------------------------

def truncate_jsonl(path: Path, step: int) -> None:
    """Keep the lines of steps up to ``step``; drop a torn last line."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(k + "\n" for k in kept))


def truncate_snapshots(folder: Path, step: int) -> None:
    """Remove the snapshots of steps after ``step`` and temporary files of killed writes; list again a
    snapshot whose file was written but whose index line was not (a kill between the two)."""
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    index = folder / "index.jsonl"
    listed = {}
    if index.exists():
        for line in index.read_text().splitlines():
            try:
                rec = json.loads(line)
                listed[rec["file"]] = rec
            except (ValueError, KeyError, TypeError):
                continue
    kept = []
    for path in sorted(folder.glob("step-*.npz")):
        s = int(_SNAPSHOT.match(path.name).group(1))
        if s > step:
            path.unlink()
        elif path.name in listed:
            kept.append(listed[path.name])
        else:
            try:
                with np.load(path, allow_pickle=False) as z:
                    kept.append({"step": int(z["step"]), "epoch": int(z["epoch"]), "file": path.name,
                                 "has_confusion": "confusion" in z.files})
            except (OSError, ValueError, KeyError):
                path.unlink()
    atomic_write_text(index, "".join(json.dumps(k) + "\n" for k in sorted(kept, key=lambda k: k["step"])))


def read_health(path: Path) -> list[dict]:
    """health.jsonl's records (for tests and readers); a torn last line is skipped."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
