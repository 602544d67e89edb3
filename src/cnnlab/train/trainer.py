"""The trainer: a recipe, real data, a progress bar, and a run folder that survives a crash.

It reads like a reference training script: :func:`train` sets up (platform, data, model, optimiser,
schedule, run folder) and runs :func:`train_one_epoch` and :func:`evaluate` epoch by epoch; the platform
(:mod:`cnnlab.platform`), the run folder (:mod:`.rundir`) and the schedule (:mod:`.schedule`) live in their own
modules, what a run holds in :mod:`cnnlab.runs`.

Checkpoints are written at the end of every epoch. ``resume`` restarts from the last one: the epoch that was
running when the process died is run again from its start with the same data order, augmentation and
dropout draws, so on CPU in deterministic mode a resumed run ends with exactly the weights of an
uninterrupted one. metrics.jsonl keeps only lines up to the checkpoint's epoch when a run resumes.
Image-folder runs resume at the same epoch boundary, but their DataLoader workers' augmentation is not
replayed draw for draw.

Under ``torchrun`` the same loop trains data-parallel (:mod:`.distributed`, docs/distributed.md): the global
batch is split across ranks, metrics are reduced over them, and only rank 0 writes the run folder. When
torchrun restarts the workers after a failure (``--max-restarts``), they resume from ``out``'s last.pt: the
interrupted epoch runs again from its start, and metrics.jsonl keeps exactly the lines of the epochs the
checkpoint holds (step lines of the interrupted epoch are dropped and written again).
"""

from __future__ import annotations

import difflib
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnlab.analysis.evaluate import topk_correct
from cnnlab.analysis.summary import summary
from cnnlab.data.view import DataView, OpenedData, open_data
from cnnlab.errors import CnnlabError, CnnlabNote
from cnnlab.models.registry import canonical_name, create_model, model_card
from cnnlab.runs import RunInfo, load_checkpoint, resolve
from cnnlab.train import distributed
from cnnlab.train.config import RunResult, TrainConfig, resumed_config
from cnnlab.platform import Platform, ThreadShare, hardware, keep_freed_memory, versions
from cnnlab.train.recipes import Recipe, get_recipe, override, recipe_for
from cnnlab.train.rundir import RunFolder, check_destination, repair_best
from cnnlab.train.average import WeightAverage
from cnnlab.train.schedule import Schedule
from cnnlab.train.watch import Watch, count_confusion
from cnnlab.transfer.prepare import prepare


def train(cfg: TrainConfig | str, /, **settings) -> RunResult:
    """Train as configured: ``train(TrainConfig("lenet5", epochs=2))``, or ``train("lenet5", epochs=2)`` with the
    settings of :class:`TrainConfig` as keywords. The process-wide determinism switch is restored afterwards.

    In a notebook the progress bar is a widget (with ipywidgets installed; else the epoch lines alone), and the
    stop button (``KeyboardInterrupt``) ends the run between two writes: the run folder keeps its last
    checkpoint, and ``train(..., resume=folder)`` goes on from it."""
    if isinstance(cfg, TrainConfig):
        if settings:
            raise CnnlabError(f"give the settings in the TrainConfig or as keywords, not both ({', '.join(settings)})")
    elif isinstance(cfg, str):
        known = {f.name for f in fields(TrainConfig)}
        unknown = [k for k in settings if k not in known]
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise CnnlabError(f"train has no setting {unknown[0]!r}; {hint}TrainConfig lists them all")
        cfg = TrainConfig(cfg, **settings)
    else:
        raise CnnlabError(f"train takes a model name or a TrainConfig, not a {type(cfg).__name__}")
    cfg = replace(cfg, model=canonical_name(cfg.model))  # a run records today's name, never an old one
    previous = torch.are_deterministic_algorithms_enabled()
    joined = distributed.launched_by_torchrun() and not torch.distributed.is_initialized()
    try:
        return _train(cfg)
    except Exception as e:
        if cfg.compile and type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
            first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise CnnlabError(f"`compile` failed: torch.compile could not build the model ({first[:300]}); on a "
                              f"CPU it needs a working C++ compiler (gcc or clang), on a GPU also Triton; install "
                              f"them or train without `compile`", params=("compile",)) from None
        raise
    finally:
        torch.use_deterministic_algorithms(previous)
        if joined:
            distributed.shutdown()


def _train(cfg: TrainConfig) -> RunResult:
    started = time.time()
    keep_freed_memory()
    dist, cfg, checkpoint, device = _join(cfg)
    check_destination(cfg.out, cfg.resume, cfg.overwrite)
    recipe = _recipe(cfg, dist.world)
    data = cfg.data or recipe.data
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    card = model_card(cfg.model)
    platform = Platform.choose(device, cfg.precision, cfg.channels_last, dist.local_rank if dist.active else None)
    view = DataView(data, card.input_size[0], card.input_size[1], recipe.augment.as_dict(), recipe.val_split or None,
                    cfg.seed, cfg.train_limit)
    train_data, eval_data = _open_data(view, recipe.batch_size, cfg, platform, dist)
    model = create_model(cfg.model, num_classes=len(train_data.classes), in_chans=train_data.channels,
                         **cfg.model_options)
    macs = _macs(model, train_data, cfg.model, card.input_size)
    platform = platform.for_network(macs, cfg.deterministic)
    model = platform.place(model)
    note, groups = prepare(model, cfg.model, cfg.model_options, cfg.pretrained, cfg.transfer, recipe.lr,
                           cfg.unfreeze, cfg.lr_backbone, load=checkpoint is None)
    t = Training(model, model, _optimizer(recipe, [p for p in model.parameters() if p.requires_grad], groups),
                 torch.amp.GradScaler("cuda", enabled=platform.precision == "fp16"),
                 Schedule(recipe, len(train_data.loader)), recipe, platform, dist, cfg.model)
    if recipe.ema:
        t.average = WeightAverage(model, recipe.ema)
    t.threads = ThreadShare(enabled=platform.device.type == "cpu" and not cfg.deterministic)
    if dist.active:
        t.model, t.step_model = distributed.wrap(model, platform.device, cfg.sync_bn)
    t.step_model = torch.compile(t.step_model) if cfg.compile else t.step_model
    with RunFolder.choose(cfg.out, cfg.resume, cfg.model, data, dist.main, cfg.overwrite) as folder:
        info = RunInfo(cfg.model, tuple(train_data.classes), train_data.channels, tuple(card.input_size), data,
                       cfg.model_options, recipe.as_dict(), eval_data.split, cfg.seed, platform.precision,
                       cfg.train_limit, asdict(cfg))
        if checkpoint is not None:
            t.restore(checkpoint, info, cfg.resume)
            if dist.main and resolve(cfg.resume).resolve() == folder.last.resolve():
                repair_best(folder.path, checkpoint)
        resolved = _resolved(cfg, info, recipe, platform, len(train_data.loader), macs, dist)
        watch = Watch(cfg, folder, t, eval_data, resolved)  # health, snapshots, learning rate on the fly
        folder.start(resolved, t.epoch, t.history)
        watch.start(t)
        say = (lambda *a: None) if cfg.quiet or not dist.main else print
        if note:
            say(note)
        _announce(say, cfg, info, recipe, platform, dist, folder, t, checkpoint)
        progress = None if cfg.quiet or not dist.main else _progress()
        try:
            for epoch in range(t.epoch, recipe.epochs):
                tr = train_one_epoch(t, train_data, epoch, folder, cfg.log_every, progress, watch)
                confusion = watch.confusion()  # filled by the evaluation, for the epoch's snapshot
                ev = evaluate(t.eval_model, eval_data, platform, dist, recipe.logit_scale, confusion, recipe.tta)
                t.schedule.end_epoch(ev["top1"])
                record = {"kind": "epoch", "epoch": epoch + 1, "step": t.step, "train_loss": tr["loss"],
                          "train_top1": tr["top1"], "eval_split": eval_data.split, "eval_loss": ev["loss"],
                          "eval_top1": ev["top1"], "eval_top5": ev["top5"], "lr": tr["lr"], "seconds": tr["seconds"],
                          "images_per_s": tr["images_per_s"], "threads": tr["threads"],
                          "elapsed": time.time() - started}
                watch.end_epoch(t, epoch, confusion)
                t.end_epoch(record, folder, info)
                say(f"epoch {epoch + 1:>3}/{recipe.epochs}  train loss {record['train_loss']:.4f} "
                    f"acc {record['train_top1']:.2f}%  {eval_data.split} loss {ev['loss']:.4f} top-1 {ev['top1']:.2f}% "
                    f"top-5 {ev['top5']:.2f}%  {record['images_per_s']:,.0f} img/s  {record['seconds']:.1f}s")
                folder.curves(t.history)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the command line raises it): stop between two writes
            if progress:
                progress.stop()
            folder.curves(t.history, final=True)
            if dist.main and folder.last.exists():
                warnings.warn(CnnlabNote(f"training stopped in epoch {t.epoch + 1} of {recipe.epochs}; `resume` "
                                         f"{folder.path} goes on from its last checkpoint, {folder.last}",
                                         params=("resume",)))
            raise
        finally:
            watch.close()
            t.threads.restore()
        if progress:
            progress.stop()
        folder.curves(t.history, final=True)
        seconds = time.time() - started
        folder.summary(resolved, t.history, t.best_top1, seconds)
        dist.barrier()  # no rank leaves (and tears the group down) before rank 0 has written everything
        say(f"done: best {eval_data.split} top-1 {t.best_top1:.2f}% in {seconds:.1f}s; run folder {folder.path}")
        return RunResult(folder.path, recipe.epochs, t.best_top1, t.history[-1] if t.history else {}, seconds,
                         dist.rank, list(t.history))


@dataclass
class Training:
    """What changes as a run trains: the model (``step_model`` is what a step calls: DDP- or compile-wrapped),
    the optimiser and its scaler, the schedule, and where the run stands."""

    model: torch.nn.Module
    step_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: Schedule
    recipe: Recipe
    platform: Platform
    dist: distributed.Dist
    name: str = ""  # the model's registered name
    epoch: int = 0  # epochs done
    step: int = 0  # optimiser steps done
    best_top1: float = -1.0
    history: list[dict] = field(default_factory=list)
    average: WeightAverage | None = None  # the recipe's moving average of the weights, if it keeps one
    threads: ThreadShare = field(default_factory=lambda: ThreadShare(enabled=False))  # CPU threads, fitted to
    # the cores that other processes leave free

    @property
    def eval_model(self) -> torch.nn.Module:
        """What is evaluated and checkpointed as the run's model: the weight average where the recipe keeps
        one, else the trained weights."""
        return self.average.model if self.average else self.model

    def state(self) -> dict:
        """The training state a checkpoint carries besides the run's info and weights."""
        device = self.platform.device
        averaged = {"trained_model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                    "average": self.average.state()} if self.average else {}
        return {**averaged, "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "schedule": self.schedule.state_dict(), "epoch": self.epoch, "step": self.step,
                "best_top1": self.best_top1, "history": self.history,
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}}

    def restore(self, checkpoint: dict, info: RunInfo, where: str) -> None:
        missing = ", ".join(k for k in ("optimizer", "epoch", "step", "best_top1", "history", "rng")
                            if k not in checkpoint)
        if missing:
            raise CnnlabError(f"{where} holds weights but not the training state that resuming needs ({missing} "
                              f"missing); evaluate it, or train anew from its weights (`cnnlab transfer --from "
                              f"{where}`)")
        if list(checkpoint["info"].classes) != list(info.classes):
            raise CnnlabError("the checkpoint was trained on other classes than this data; resume with its own `data`",
                              params=("data",))
        # the trained weights are the checkpoint's "model" unless it kept an average beside them; a run written
        # before its recipe averaged starts the average from them (a recipe of this version may average where
        # the run's did not, or the other way round)
        trained = checkpoint.get("trained_model", checkpoint["model"])
        try:
            self.model.load_state_dict(trained)
            if self.average:
                self.average.load(checkpoint["model"], checkpoint.get("average") or {})
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except (RuntimeError, ValueError) as e:
            raise CnnlabError(f"{where} does not fit {info.model} with {info.num_classes} classes "
                              f"({str(e).splitlines()[0]})") from None
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.schedule.load_state_dict(checkpoint.get("schedule"))
        torch.set_rng_state(checkpoint["rng"]["torch"])
        device = self.platform.device
        if device.type == "cuda" and checkpoint["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(checkpoint["rng"]["cuda"], device)
        self.epoch, self.step = checkpoint["epoch"], checkpoint["step"]
        self.best_top1, self.history = checkpoint["best_top1"], list(checkpoint["history"])

    def end_epoch(self, record: dict, folder: RunFolder, info: RunInfo) -> None:
        """Record the epoch and checkpoint it (last.pt, and best.pt when its evaluation top-1 is the best)."""
        self.epoch = record["epoch"]
        self.history.append(record)
        best = record["eval_top1"] > self.best_top1
        self.best_top1 = max(self.best_top1, record["eval_top1"])
        if folder.main:  # the checkpoint first: metrics.jsonl never holds an epoch that no checkpoint has (a
            # kill between the two is mended on resume from the checkpoint's history)
            weights = {k: v.detach().cpu() for k, v in self.eval_model.state_dict().items()}
            folder.save(info, weights, self.state(), best)
        folder.log(record)


def train_one_epoch(t: Training, data: OpenedData, epoch: int, folder: RunFolder, log_every: int, progress,
                    watch: Watch) -> dict:
    """One pass over the training data: the mean loss, top-1, last learning rate, seconds and images/s."""
    loader, recipe, device, dtype = data.loader, t.recipe, t.platform.device, t.platform.dtype
    loader.epoch = epoch
    if hasattr(getattr(loader, "sampler", None), "set_epoch"):
        loader.sampler.set_epoch(epoch)  # DistributedSampler: a new shuffle every epoch
    t.model.train()
    t0, seen, correct, loss_sum, lr = time.time(), 0, 0, 0.0, 0.0
    task = progress.add_task(f"epoch {epoch + 1}/{recipe.epochs}", total=len(loader), loss=0.0, acc=0.0,
                             ips=0.0) if progress else None
    if progress and not progress.live.is_started:
        progress.start()
    threads = []
    for i, (x, y) in enumerate(loader):
        threads.append(t.threads.poll())
        watch.before_step(t, epoch)  # a learning-rate change asked for; on a health step, hooks and a weight copy
        x, y = x.to(device, dtype, non_blocking=True), y.to(device, non_blocking=True)
        lr = t.schedule.lr(t.step)
        for g in t.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        with _stopping(progress, recipe, t, epoch, i, folder):
            with t.platform.autocast():
                loss, logits = classification_loss(t.step_model(x), y, recipe.label_smoothing, recipe.logit_scale)
            value, hits, n = loss.item(), (logits.argmax(1) == y).sum().item(), y.numel()
            if t.dist.active:  # the step's loss and accuracy over every rank (one small all-reduce): all ranks
                # then agree on whether the loss is finite, and the logs show the global batch
                total, hits, n = t.dist.sum([value * n, hits, n], device)
                value = total / n
            if not math.isfinite(value):
                raise _NotFinite(value)
        t.optimizer.zero_grad(set_to_none=True)
        t.scaler.scale(loss).backward()
        if recipe.clip_grad_norm:
            t.scaler.unscale_(t.optimizer)
            torch.nn.utils.clip_grad_norm_(t.model.parameters(), recipe.clip_grad_norm)
        t.scaler.step(t.optimizer)
        t.scaler.update()
        if t.average:
            t.average.update(t.model)
        t.step += 1
        watch.after_step(t, epoch)  # the health line, a snapshot when one is due
        seen, loss_sum, correct = seen + int(n), loss_sum + value * n, correct + int(hits)
        ips = seen / max(1e-9, time.time() - t0)
        if progress:
            progress.update(task, advance=1, loss=loss_sum / seen, acc=100.0 * correct / seen, ips=ips)
        if log_every and t.step % log_every == 0:
            folder.log({"kind": "step", "epoch": epoch + 1, "step": t.step, "loss": value, "lr": lr,
                        "images_per_s": ips})
    seconds = time.time() - t0
    if progress:
        progress.remove_task(task)
    return {"loss": loss_sum / seen, "top1": 100.0 * correct / seen, "lr": lr, "seconds": seconds,
            "images_per_s": seen / seconds, "threads": round(sum(threads) / len(threads), 2)}


def evaluate(model, data: OpenedData, platform: Platform, dist: distributed.Dist = distributed.Dist(),
             logit_scale: float = 1.0, confusion: torch.Tensor | None = None, tta: str = "") -> dict:
    """Loss (of the logits times ``logit_scale``, as in training), top-1 and top-5 over ``data``; under data
    parallelism each rank scores its share and the sums are reduced. ``confusion`` (K x K), if given, gets the
    counts of (true class, predicted class). ``tta`` "flip" scores the mean of the image's and its mirror's
    softmax, as ``cnnlab eval --tta flip`` does."""
    model.eval()
    total = correct1 = correct5 = 0
    loss_sum = 0.0
    with torch.no_grad():
        for x, y in data.loader:
            x, y = x.to(platform.device, platform.dtype), y.to(platform.device)
            with platform.autocast():
                out = model(x)
                mirrored = model(x.flip(3)) if tta == "flip" else None
            out = out.float() if out.dtype in (torch.float16, torch.bfloat16) else out
            if mirrored is not None:  # log of the mean softmax: its cross-entropy is the averaged one's
                views = torch.stack([F.log_softmax(v.float() * logit_scale, 1) for v in (out, mirrored)])
                out = torch.logsumexp(views, 0) - math.log(2)
                loss_sum += F.nll_loss(out, y, reduction="sum").item()
            else:
                loss_sum += F.cross_entropy(out * logit_scale, y, reduction="sum").item()
            hits1, hits5 = topk_correct(out, y)
            if confusion is not None:
                count_confusion(confusion, y, out.argmax(1))
            correct1, correct5, total = correct1 + hits1, correct5 + hits5, total + y.numel()
    loss_sum, correct1, correct5, total = dist.sum([loss_sum, correct1, correct5, total], platform.device)
    if confusion is not None:
        confusion.copy_(dist.sum_tensor(confusion, platform.device))
    return {"loss": loss_sum / total, "top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total}


def classification_loss(output, target, smoothing: float, logit_scale: float = 1.0):
    """Cross-entropy of the logits times ``logit_scale``; auxiliary outputs (a tuple/namedtuple of logits)
    are weighted as their model says. Returns the loss and the main logits as the model gave them."""

    def ce(logits):
        return F.cross_entropy(logits * logit_scale if logit_scale != 1.0 else logits, target,
                               label_smoothing=smoothing)

    if isinstance(output, torch.Tensor):
        return ce(output), output
    main, *aux = output
    weights = getattr(output, "aux_weights", (0.3,) * len(aux))
    loss = ce(main)
    for w, a in zip(weights, aux):
        loss = loss + w * ce(a)
    return loss, main


# -- setting up ------------------------------------------------------------------------------------------

def _join(cfg: TrainConfig) -> tuple[distributed.Dist, TrainConfig, dict | None, str]:
    """Join the data-parallel group if torchrun started this process, and open the checkpoint to resume
    from: ``resume``, or ``out``'s when torchrun restarted the workers after a failure. Returns the group, the
    configuration to train with, the checkpoint (or None) and the device to use."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1) if distributed.launched_by_torchrun() else 1
    if world > 1 and not (cfg.out or cfg.resume):
        raise CnnlabError(distributed.NEEDS_OUT, params=("out", "resume"))
    if cfg.sync_bn and world > 1 and (cfg.device == "cpu" or not torch.cuda.is_available()):
        raise CnnlabError("`sync_bn` needs GPUs (PyTorch's SyncBatchNorm does not run on CPU)", params=("sync_bn",))
    dist, device = distributed.init(cfg.device)
    # restarted by torchrun (on any node: the ranks agreed while joining): go on from the checkpoint
    if dist.restarted and not cfg.resume and cfg.out and (Path(cfg.out) / "last.pt").exists():
        cfg = replace(cfg, resume=cfg.out)
    if not cfg.resume:
        return dist, cfg, None, device
    checkpoint = load_checkpoint(cfg.resume)
    cfg = resumed_config(checkpoint["info"], cfg)
    return dist, cfg, checkpoint, device if dist.active else cfg.device


def _recipe(cfg: TrainConfig, world: int) -> Recipe:
    recipe = get_recipe(cfg.recipe) if cfg.recipe else recipe_for(cfg.model)
    recipe = override(recipe, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, val_split=cfg.val_split)
    for what, v in (("epochs", recipe.epochs), ("batch_size", recipe.batch_size)):
        if v < 1:
            raise CnnlabError(f"`{what}` must be 1 or more, got {v}", params=(what,))
    if not recipe.lr > 0:
        raise CnnlabError(f"`lr` must be positive, got {recipe.lr}", params=("lr",))
    distributed.check_global_batch(recipe.batch_size, world)
    return recipe


def _open_data(view: DataView, batch_size: int, cfg: TrainConfig, platform: Platform, dist) \
        -> tuple[OpenedData, OpenedData]:
    """The training and evaluation data (this rank's share); refused when no full batch can be made."""
    common = dict(data_dir=cfg.data_dir, rank=dist.rank, world=dist.world, device=platform.device,
                  channels_last=platform.channels_last, explicit_val_split=cfg.val_split is not None,
                  skip_bad_images=cfg.skip_bad_images)
    train_data = open_data(view, "train", train=True, batch_size=batch_size, **common)
    eval_split = "val" if view.val_split else "test"
    eval_data = open_data(view, eval_split, batch_size=batch_size if view.is_folder else max(256, batch_size),
                          **common)
    if len(train_data.loader) == 0:
        raise CnnlabError(f"{len(train_data):,} training images make no full batch of {batch_size}: lower "
                          f"`batch_size`, or train on more images (`train_limit`, `val_split`)",
                          params=("batch_size", "train_limit", "val_split"))
    return train_data, eval_data


def _macs(model, data: OpenedData, name: str, card_size: tuple[int, int, int]) -> int:
    """The network's multiply-adds per image at the data's image size (one image, eval mode, no grad), which
    also checks that the network fits the data."""
    from cnnlab.data.memory import pad_to

    if data.view.is_folder:
        hw = tuple(card_size[1:])
    else:
        hw = tuple(pad_to(data.dataset.images[:1], data.view.pad_to).shape[-2:])
    try:
        return summary(model, (data.channels, *hw)).total_macs
    except CnnlabError as e:
        reason = str(e).split(" input: ", 1)[-1].split("; try its default input", 1)[0]
        size = "x".join(map(str, card_size))
        raise CnnlabError(f"{name} cannot train on the {data.channels}x{hw[0]}x{hw[1]} images of {data.view.data} "
                          f"({reason}); it is built for {size}: train it on an image folder (resized to {size}) or "
                          f"pick a model made for {hw[0]}x{hw[1]} images") from None


def _optimizer(recipe: Recipe, params, scaled: list[tuple[list, float]] | None = None):
    """SGD/RMSprop/Adam over ``params``, or over ``scaled`` (parameters, learning-rate scale) groups."""
    groups = []
    for ps, scale in scaled or [(list(params), 1.0)]:
        decay = [p for p in ps if p.ndim > 1]
        no_decay = [p for p in ps if p.ndim <= 1]  # no weight decay on biases and BN parameters
        groups += [{"params": decay, "weight_decay": recipe.weight_decay, "lr_scale": scale},
                   {"params": no_decay, "weight_decay": 0.0, "lr_scale": scale}]
    groups = [g for g in groups if g["params"]]
    if recipe.optimizer in ("sgd", "nesterov"):
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.optimizer == "nesterov")
    if recipe.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=recipe.lr, momentum=recipe.momentum, alpha=0.9, eps=1.0)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(groups, lr=recipe.lr)
    raise CnnlabError(f"unknown optimiser {recipe.optimizer!r}")


def _resolved(cfg: TrainConfig, info: RunInfo, recipe: Recipe, platform: Platform, steps_per_epoch: int,
              macs: int, dist) -> dict:
    """config.json: every setting as resolved (recipe, then flags), versions, hardware."""
    return {
        **asdict(cfg), "data": info.data, "recipe": recipe.name, "recipe_settings": recipe.as_dict(),
        "precision": platform.precision, "channels_last": platform.channels_last, "eval_split": info.eval_split,
        "classes": list(info.classes), "steps_per_epoch": steps_per_epoch, "macs_per_image": macs,
        "versions": versions(), "hardware": hardware(platform.device),
        "distributed": {"world_size": dist.world, "backend": torch.distributed.get_backend() if dist.active
                        else None, "per_rank_batch": recipe.batch_size // dist.world},
    }


def _announce(say, cfg, info: RunInfo, recipe: Recipe, platform: Platform, dist, folder: RunFolder, t: Training,
              checkpoint: dict | None) -> None:
    if t.epoch == 0:
        parallel = (f" in {dist.world} data-parallel processes ({torch.distributed.get_backend()}, "
                    f"{recipe.batch_size // dist.world} images each)" if dist.active else "")
        say(f"training {cfg.model} on {info.data} (evaluating on the {info.eval_split} set) with recipe "
            f"{recipe.name}: {recipe.epochs} epochs, batch {recipe.batch_size}, {recipe.optimizer} lr {recipe.lr}, "
            f"{platform.describe()}{parallel}; run folder {folder.path}")
        return
    say(f"resuming {folder.path} after epoch {t.epoch} of {recipe.epochs}")
    stretched = t.schedule.stretched(checkpoint["info"].recipe, t.step)
    if stretched and dist.main:
        warnings.warn(CnnlabNote(stretched, params=("epochs",)), stacklevel=3)


class _NotFinite(Exception):
    def __init__(self, value: float):
        self.value = value


class _stopping:
    """Around a training step: the progress bar stops before a step's failure becomes a sentence (out of
    memory: lower the batch; a loss that is not finite: lower the learning rate, resume or start again)."""

    def __init__(self, progress, recipe: Recipe, t: Training, epoch: int, i: int, folder: RunFolder):
        self.progress, self.recipe, self.t, self.epoch, self.i, self.folder = progress, recipe, t, epoch, i, folder

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if e is None:
            return False
        memory = isinstance(e, (torch.OutOfMemoryError, RuntimeError)) and _out_of_memory(e)
        if not (memory or isinstance(e, _NotFinite)):
            return False
        if self.progress:
            self.progress.stop()
        r, where = self.recipe, f"epoch {self.epoch + 1}, step {self.i + 1}"
        if memory:
            raise CnnlabError(f"a batch of {r.batch_size} images of {self.t.name} does not fit in "
                              f"{self.t.platform.device.type.upper()} memory; lower `batch_size`",
                              params=("batch_size",)) from None
        if self.folder.last.exists():
            raise CnnlabError(f"the loss became {e.value} at {where}; training stopped. Lower `lr` (now {r.lr}) and "
                              f"resume from {self.folder.last} or start again; the last good checkpoint is kept",
                              params=("lr",)) from None
        raise CnnlabError(f"the loss became {e.value} at {where}; training stopped before any checkpoint. Lower "
                          f"`lr` (now {r.lr}) and start again", params=("lr",)) from None


def _out_of_memory(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text \
        or "not enough memory" in text


def _progress():
    """rich's progress bar: in a terminal, and in a notebook as a widget where ipywidgets is installed (without it
    rich would warn at every refresh; the epoch lines are printed either way)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if Console().is_jupyter:
        try:
            import ipywidgets  # noqa: F401
        except ImportError:
            return None

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.2f}%  "
                               "{task.fields[ips]:,.0f} img/s"), TimeRemainingColumn(), transient=True)
