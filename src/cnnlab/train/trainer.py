"""The trainer: a recipe, real data, a progress bar, and a run folder that survives a crash.

Run folder::

    config.json    every resolved setting (recipe, then flags), versions, hardware
    metrics.jsonl  one line per epoch, and one every ``log_every`` steps
    curves.png     loss and accuracy, training and evaluation
    last.pt        the latest checkpoint (model, optimiser, scheduler, scaler, epoch, step, RNG state)
    best.pt        the checkpoint with the best evaluation accuracy
    summary.md     what was trained, on what, how well and how fast

Checkpoints are written at the end of every epoch. ``--resume`` restarts from the last one: the epoch that
was running when the process died is run again from its start with the same data order, augmentation and
dropout draws, so on CPU in deterministic mode a resumed run ends with exactly the weights of an
uninterrupted one. metrics.jsonl keeps only lines up to the checkpoint's epoch when a run resumes.
Image-folder runs resume at the same epoch boundary, but their DataLoader workers' augmentation is not
replayed draw for draw.

Under ``torchrun`` the same loop trains data-parallel (cnnlab.train.distributed, docs/distributed.md): the
global batch is split across ranks, metrics are reduced over them, and only rank 0 writes the run folder.
When torchrun restarts the workers after a failure (``--max-restarts``), they resume from ``--out``'s
last.pt: the interrupted epoch runs again from its start, and metrics.jsonl keeps exactly the lines of the
epochs the checkpoint holds (step lines of the interrupted epoch are dropped and written again).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnlab.analysis.summary import summary
from cnnlab.data.memory import MemoryLoader, balanced_subset, load, pad_to, split_train_val
from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_savefig, atomic_write_text
from cnnlab.models.registry import create_model, model_card
from cnnlab.train import distributed
from cnnlab.train.platform import (hardware, keep_freed_memory, resolve_channels_last, resolve_device,
                                   resolve_precision, versions)
from cnnlab.train.config import RunResult, TrainConfig, resumed_config
from cnnlab.train.checkpoint import atomic_write_json, load_checkpoint, save_checkpoint
from cnnlab.train.recipes import Recipe, get_recipe, override, recipe_for


# -- data ------------------------------------------------------------------------------------------------

def make_data(data: str, recipe: Recipe, batch_size: int, seed: int, data_dir, val_split: float,
              input_size: tuple[int, int, int], device, channels_last: bool, train_limit: int | None = None,
              rank: int = 0, world: int = 1, val_split_explicit: bool = True):
    """(train loader, eval loader, classes, eval split name, channels); with ``world`` > 1 the loaders
    serve this rank's share: ``batch_size`` is the global batch."""
    if data.startswith("folder:"):
        from cnnlab.data.folder import folder_datasets, folder_loader

        path = data.split(":", 1)[1]
        if train_limit:
            raise CnnlabError("--train-limit works with the in-memory datasets (mnist, cifar10, ...), not image "
                              "folders: copy the images you want into a smaller folder instead")
        if path in ("", "imagenet"):
            raise CnnlabError("this recipe trains on an image folder: pass --data folder:PATH "
                              "(PATH/<class>/*.jpg, or PATH/train and PATH/val)")
        train, evald, classes, eval_name = folder_datasets(path, input_size[1], val_split or None, seed,
                                                           input_size[0], explicit=val_split_explicit)
        return (folder_loader(train, batch_size, True, seed, rank=rank, world=world),
                folder_loader(evald, batch_size, False, seed, rank=rank, world=world),
                classes, eval_name, input_size[0])
    train = load(data, "train", data_dir)
    if train_limit:
        train = balanced_subset(train, train_limit, seed)
    if val_split:
        train, evald = split_train_val(train, val_split, seed)
        eval_name = "val"
    else:
        evald, eval_name = load(data, "test", data_dir), "test"
    aug = recipe.augment
    tl = MemoryLoader(train, batch_size, True, aug, seed, drop_last=True, device=device, channels_last=channels_last,
                      rank=rank, world=world)
    el = MemoryLoader(evald, max(256, batch_size), False, aug, seed, device=device, channels_last=channels_last,
                      rank=rank, world=world)
    return tl, el, train.classes, eval_name, train.channels


def _image_size(loader, card_size: tuple[int, int, int]) -> tuple[int, int]:
    """The height and width of the images a training loader serves: an in-memory dataset's (after padding to
    the recipe's canvas), an image folder's are resized to the model's card size."""
    if isinstance(loader, MemoryLoader):
        return tuple(pad_to(loader.ds.images[:1], loader.aug.pad_to).shape[-2:])
    return tuple(card_size[1:])


# -- the loop ----------------------------------------------------------------------------------------------

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


def _stretched_schedule(saved: dict, recipe: Recipe, step: int, steps_per_epoch: int) -> str:
    """A sentence when resuming with other --epochs changes a schedule laid over the whole run (cosine,
    one-cycle): the learning rate at the next step then differs from the one the run had reached."""
    old_epochs = saved.get("epochs", recipe.epochs)
    if old_epochs == recipe.epochs or recipe.schedule not in ("cosine", "onecycle"):
        return ""
    before = recipe.lr * recipe.lr_factor(step, steps_per_epoch, steps_per_epoch * old_epochs)
    after = recipe.lr * recipe.lr_factor(step, steps_per_epoch, steps_per_epoch * recipe.epochs)
    return (f"--epochs {recipe.epochs} (the run had {old_epochs}) lays the {recipe.schedule} schedule over "
            f"{recipe.epochs} epochs, so the learning rate at step {step + 1} is {after:.3g} instead of "
            f"{before:.3g}: this continues the run as a new, longer schedule, not where it stopped")


def _setup_transfer(cfg: TrainConfig, model, recipe: Recipe, fresh: bool) -> str:
    """Load pretrained weights (not when resuming: the checkpoint has them) and freeze what
    ``cfg.transfer`` says. Returns a line for the log."""
    if cfg.transfer not in (None, "features", "finetune"):
        raise CnnlabError(f"--mode must be 'features' or 'finetune', not {cfg.transfer!r}")
    if cfg.transfer and not cfg.pretrained:
        raise CnnlabError("transfer learning needs weights to start from: pass --from")
    if cfg.lr_backbone is not None and not cfg.lr_backbone >= 0:
        raise CnnlabError(f"--lr-backbone must be 0 or more, got {cfg.lr_backbone}")
    note = ""
    if cfg.pretrained and fresh:
        from cnnlab.transfer import load_pretrained

        note = load_pretrained(model, cfg.model, cfg.pretrained, **cfg.model_options).text()
    if cfg.transfer == "features":
        from cnnlab.transfer import freeze_backbone, heads

        trainable = freeze_backbone(model, heads(model, cfg.model, **cfg.model_options), cfg.unfreeze)
        if not any(p.requires_grad for p in model.parameters()):
            raise CnnlabError(f"{cfg.model}'s head has no trainable parameters; add --unfreeze N to train "
                              f"the last N blocks")
        note += f"\nfeature extraction: training {', '.join(trainable)}; the rest is frozen, in eval mode"
    elif cfg.transfer == "finetune":
        lr_b = cfg.lr_backbone if cfg.lr_backbone is not None else recipe.lr / 10
        note += f"\nfine-tuning: heads at lr {recipe.lr:g}, backbone at lr {lr_b:g}"
    return note.strip()


def _loss(output, target, smoothing: float, logit_scale: float = 1.0):
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


def evaluate_loader(model, loader, device, autocast, dist: distributed.Dist = distributed.Dist(),
                    dtype: torch.dtype | None = None, logit_scale: float = 1.0) -> dict:
    """Loss (of the logits times ``logit_scale``, as in training), top-1 and top-5 over the loader; under
    data parallelism each rank scores its share and the sums are reduced."""
    model.eval()
    total = correct1 = correct5 = 0
    loss_sum = 0.0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device, dtype), y.to(device)
            with autocast():
                out = model(x)
            out = out.float() if out.dtype in (torch.float16, torch.bfloat16) else out
            loss_sum += F.cross_entropy(out * logit_scale, y, reduction="sum").item()
            k = min(5, out.shape[1])
            top = out.topk(k, 1).indices
            correct1 += (top[:, 0] == y).sum().item()
            correct5 += (top == y[:, None]).any(1).sum().item()
            total += y.numel()
    loss_sum, correct1, correct5, total = dist.sum([loss_sum, correct1, correct5, total], device)
    return {"loss": loss_sum / total, "top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total}


def _progress(quiet: bool):
    if quiet:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.2f}%  "
                               "{task.fields[ips]:,.0f} img/s"), TimeRemainingColumn(), transient=True)


def train(cfg: TrainConfig) -> RunResult:
    """Train as configured; the process-wide determinism switch is restored afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    joined = distributed.launched_by_torchrun() and not torch.distributed.is_initialized()
    try:
        return _train(cfg)
    except Exception as e:
        if cfg.compile and type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
            first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise CnnlabError(f"--compile failed: torch.compile could not build the model ({first[:300]}); "
                              f"on a CPU it needs a working C++ compiler (gcc or clang), on a GPU also Triton; "
                              f"install them or train without --compile") from None
        raise
    finally:
        torch.use_deterministic_algorithms(previous)
        if joined:
            distributed.shutdown()


def _train(cfg: TrainConfig) -> RunResult:
    started = time.time()
    keep_freed_memory()
    resume_state = None
    world = int(os.environ.get("WORLD_SIZE", "1") or 1) if distributed.launched_by_torchrun() else 1
    if world > 1 and not (cfg.out or cfg.resume):
        raise CnnlabError("data-parallel training needs --out (or --resume): every worker, and workers that "
                          "torchrun restarts, must find the same run folder")
    if cfg.sync_bn and world > 1 and (cfg.device == "cpu" or not torch.cuda.is_available()):
        raise CnnlabError("--sync-bn needs GPUs (PyTorch's SyncBatchNorm does not run on CPU)")
    dist, device_name = distributed.init(cfg.device)
    # restarted by torchrun (on any node: the ranks agreed while joining): go on from the checkpoint
    if dist.restarted and not cfg.resume and cfg.out and (Path(cfg.out) / "last.pt").exists():
        cfg = TrainConfig(**{**asdict(cfg), "resume": cfg.out})
    if cfg.resume:
        resume_state = load_checkpoint(cfg.resume)
        cfg = resumed_config(resume_state["config"], cfg)
        if not dist.active:
            device_name = cfg.device

    recipe = get_recipe(cfg.recipe) if cfg.recipe else recipe_for(cfg.model)
    recipe = override(recipe, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, val_split=cfg.val_split)
    data = cfg.data or recipe.data
    for what, v in (("--epochs", recipe.epochs), ("--batch-size", recipe.batch_size)):
        if v < 1:
            raise CnnlabError(f"{what} must be 1 or more, got {v}")
    if not recipe.lr > 0:
        raise CnnlabError(f"--lr must be positive, got {recipe.lr}")
    if recipe.batch_size % world:
        raise CnnlabError(f"--batch-size {recipe.batch_size} is the global batch and must split evenly over "
                          f"{world} processes; pick a multiple of {world}")
    if cfg.sync_bn and world > 1 and (cfg.device == "cpu" or not torch.cuda.is_available()):
        raise CnnlabError("--sync-bn needs GPUs (PyTorch's SyncBatchNorm does not run on CPU)")

    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    device = resolve_device(device_name)
    if dist.active and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    card = model_card(cfg.model)

    # The layout is needed before the data and the model exist: on a CPU it does not depend on the precision,
    # and on a GPU the precision does not depend on the network's size; this also checks --precision early.
    early = resolve_precision(cfg.precision, device, 0)
    channels_last = resolve_channels_last(cfg.channels_last, early, device)

    train_loader, eval_loader, classes, eval_name, channels = make_data(
        data, recipe, recipe.batch_size, cfg.seed, cfg.data_dir, recipe.val_split, card.input_size, device,
        channels_last, cfg.train_limit, dist.rank, dist.world, val_split_explicit=cfg.val_split is not None)
    images = train_loader.ds if isinstance(train_loader, MemoryLoader) else train_loader.dataset
    if len(train_loader) == 0:
        raise CnnlabError(f"{len(images):,} training images make no full batch of {recipe.batch_size}: lower "
                          f"--batch-size, or train on more images (--train-limit, --val-split)")
    model = create_model(cfg.model, num_classes=len(classes), in_chans=channels, **cfg.model_options)
    hw = _image_size(train_loader, card.input_size)
    try:  # one image, eval mode, no grad: the multiply-adds, and a check that the network fits the data
        macs = summary(model, (channels, *hw)).total_macs
    except CnnlabError as e:
        reason = str(e).split(" input: ", 1)[-1].split("; try its default input", 1)[0]
        size = "x".join(map(str, card.input_size))
        raise CnnlabError(f"{cfg.model} cannot train on the {channels}x{hw[0]}x{hw[1]} images of {data} ({reason}); "
                          f"it is built for {size}: train it on an image folder (resized to {size}) or pick a "
                          f"model made for {hw[0]}x{hw[1]} images") from None
    precision = ("fp32" if cfg.deterministic and cfg.precision == "auto"
                 else resolve_precision(cfg.precision, device, macs))
    transfer_note = _setup_transfer(cfg, model, recipe, resume_state is None)
    model = model.to(device)
    dtype = torch.float64 if precision == "fp64" else None  # fp64: inputs and weights in double
    if dtype:
        model = model.to(dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    scaled = None
    if cfg.transfer:
        from cnnlab.transfer import heads, param_groups

        backbone = (cfg.lr_backbone if cfg.lr_backbone is not None else recipe.lr / 10) / recipe.lr
        scaled = param_groups(model, heads(model, cfg.model, **cfg.model_options),
                              backbone if cfg.transfer == "finetune" else 1.0)
    optimizer = _optimizer(recipe, [p for p in model.parameters() if p.requires_grad], scaled)
    scaler = torch.amp.GradScaler("cuda", enabled=(precision == "fp16"))
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
    step_model = model
    if dist.active:
        model, step_model = distributed.wrap(model, device, cfg.sync_bn)
    step_model = torch.compile(step_model) if cfg.compile else step_model

    if cfg.out:
        run_dir = Path(cfg.out)
    elif cfg.resume:
        run_dir = Path(cfg.resume).parent if Path(cfg.resume).is_file() else Path(cfg.resume)
    else:
        tag = data.replace(":", "_").replace("/", "_")
        run_dir = Path("runs") / f"{cfg.model}-{tag}-{datetime.now():%Y%m%d-%H%M%S}"
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)

    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * recipe.epochs
    start_epoch, step, plateau, best_top1, history = 0, 0, {"factor": 1.0, "best": -1.0, "bad": 0}, -1.0, []
    if resume_state is not None:
        if resume_state["classes"] != list(classes):
            raise CnnlabError("the checkpoint was trained on other classes than this data; resume with its own --data")
        try:
            model.load_state_dict(resume_state["model"])
            optimizer.load_state_dict(resume_state["optimizer"])
        except (RuntimeError, ValueError) as e:
            raise CnnlabError(f"{cfg.resume} does not fit {cfg.model} with {len(classes)} classes "
                              f"({str(e).splitlines()[0]})") from None
        if resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        torch.set_rng_state(resume_state["rng"]["torch"])
        if device.type == "cuda" and resume_state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(resume_state["rng"]["cuda"], device)
        start_epoch, step = resume_state["epoch"], resume_state["step"]
        plateau, best_top1 = dict(resume_state["plateau"]), resume_state["best_top1"]
        history = list(resume_state["history"])

    resolved = {
        **asdict(cfg), "data": data, "recipe": recipe.name, "recipe_settings": recipe.as_dict(),
        "precision": precision, "channels_last": channels_last, "eval_split": eval_name,
        "classes": list(classes), "steps_per_epoch": steps_per_epoch, "macs_per_image": macs,
        "versions": versions(),
        "hardware": hardware(device),
        "distributed": {"world_size": dist.world, "backend": torch.distributed.get_backend() if dist.active
                        else None, "per_rank_batch": recipe.batch_size // dist.world},
    }
    metrics_path = run_dir / "metrics.jsonl"
    if dist.main:
        atomic_write_json(run_dir / "config.json", resolved)
        _truncate_metrics(metrics_path, start_epoch)

    def log(record: dict):
        if not dist.main:
            return
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def checkpoint_state(epoch: int) -> dict:
        return {
            "model_name": cfg.model, "model_options": cfg.model_options, "num_classes": len(classes),
            "in_chans": channels, "input_size": list(card.input_size), "classes": list(classes), "data": data,
            "config": asdict(cfg), "recipe": recipe.as_dict(), "eval_split": eval_name, "precision": precision,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "plateau": plateau, "epoch": epoch, "step": step, "best_top1": best_top1, "history": history,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
        }

    say = (lambda *a: None) if cfg.quiet or not dist.main else print
    if transfer_note:
        say(transfer_note)
    parallel = (f" in {dist.world} data-parallel processes ({torch.distributed.get_backend()}, "
                f"{recipe.batch_size // dist.world} images each)" if dist.active else "")
    if start_epoch == 0:
        say(f"training {cfg.model} on {data} (evaluating on the {eval_name} set) with recipe {recipe.name}: "
            f"{recipe.epochs} epochs, batch {recipe.batch_size}, {recipe.optimizer} lr {recipe.lr}, {precision}"
            f"{' channels-last' if channels_last else ''} on {device}"
            f"{parallel}; run folder {run_dir}")
    else:
        say(f"resuming {run_dir} after epoch {start_epoch} of {recipe.epochs}")
        stretched = _stretched_schedule(resume_state["recipe"], recipe, step, steps_per_epoch)
        if stretched and dist.main:
            print(f"cnnlab: note: {stretched}", file=sys.stderr)

    progress = _progress(cfg.quiet or not dist.main)
    final = history[-1] if history else {}
    for epoch in range(start_epoch, recipe.epochs):
        train_loader.epoch = epoch
        if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
            train_loader.sampler.set_epoch(epoch)  # DistributedSampler: a new shuffle every epoch
        model.train()
        t0 = time.time()
        seen = correct = 0
        loss_sum = 0.0
        task = progress.add_task(f"epoch {epoch + 1}/{recipe.epochs}", total=steps_per_epoch, loss=0.0, acc=0.0,
                                 ips=0.0) if progress else None
        if progress and epoch == start_epoch:
            progress.start()
        for i, (x, y) in enumerate(train_loader):
            x, y = x.to(device, dtype, non_blocking=True), y.to(device, non_blocking=True)
            lr = recipe.lr * recipe.lr_factor(step, steps_per_epoch, total_steps) * plateau["factor"]
            for g in optimizer.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            try:
                with autocast():
                    out = step_model(x)
                    loss, logits = _loss(out, y, recipe.label_smoothing, recipe.logit_scale)
                value, hits, n = loss.item(), (logits.argmax(1) == y).sum().item(), y.numel()
                if dist.active:  # the step's loss and accuracy over every rank (one small all-reduce): all
                    # ranks then agree on whether the loss is finite, and the logs show the global batch
                    total, hits, n = dist.sum([value * n, hits, n], device)
                    value = total / n
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if not _out_of_memory(e):
                    raise
                if progress:
                    progress.stop()
                raise CnnlabError(f"a batch of {recipe.batch_size} images of {cfg.model} does not fit in "
                                  f"{device.type.upper()} memory; lower --batch-size") from None
            if not math.isfinite(value):
                if progress:
                    progress.stop()
                raise CnnlabError(
                    f"the loss became {value} at epoch {epoch + 1}, step {i + 1}; training stopped. Lower --lr "
                    f"(now {recipe.lr}) and resume from {run_dir / 'last.pt'} or start again; the last good "
                    f"checkpoint is kept" if (run_dir / "last.pt").exists() else
                    f"the loss became {value} at epoch {epoch + 1}, step {i + 1}; training stopped before any "
                    f"checkpoint. Lower --lr (now {recipe.lr}) and start again")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if recipe.clip_grad_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            seen += int(n)
            loss_sum += value * n
            correct += int(hits)
            ips = seen / max(1e-9, time.time() - t0)
            if progress:
                progress.update(task, advance=1, loss=loss_sum / seen, acc=100.0 * correct / seen, ips=ips)
            if cfg.log_every and step % cfg.log_every == 0:
                log({"kind": "step", "epoch": epoch + 1, "step": step, "loss": value, "lr": lr, "images_per_s": ips})
        train_seconds = time.time() - t0
        ev = evaluate_loader(model, eval_loader, device, autocast, dist, dtype, recipe.logit_scale)
        record = {"kind": "epoch", "epoch": epoch + 1, "step": step, "train_loss": loss_sum / seen,
                  "train_top1": 100.0 * correct / seen, "eval_split": eval_name, "eval_loss": ev["loss"],
                  "eval_top1": ev["top1"], "eval_top5": ev["top5"], "lr": lr, "seconds": train_seconds,
                  "images_per_s": seen / train_seconds, "elapsed": time.time() - started}
        if progress:
            progress.remove_task(task)
        if recipe.schedule == "plateau":
            if ev["top1"] > plateau["best"]:
                plateau["best"], plateau["bad"] = ev["top1"], 0
            else:
                plateau["bad"] += 1
                if plateau["bad"] >= recipe.patience:
                    plateau["factor"] *= recipe.gamma
                    plateau["bad"] = 0
        history.append(record)
        log(record)
        is_best = ev["top1"] > best_top1
        best_top1 = max(best_top1, ev["top1"])
        if dist.main:
            state = checkpoint_state(epoch + 1)
            save_checkpoint(state, run_dir / "last.pt")
            if is_best:
                save_checkpoint(state, run_dir / "best.pt")
        final = record
        say(f"epoch {epoch + 1:>3}/{recipe.epochs}  train loss {record['train_loss']:.4f} "
            f"acc {record['train_top1']:.2f}%  {eval_name} loss {ev['loss']:.4f} top-1 {ev['top1']:.2f}% "
            f"top-5 {ev['top5']:.2f}%  {record['images_per_s']:,.0f} img/s  {train_seconds:.1f}s")
        if dist.main:
            write_curves(history, run_dir / "curves.png")
    if progress:
        progress.stop()
    seconds = time.time() - started
    if dist.main:
        write_summary(run_dir, resolved, history, best_top1, seconds)
    dist.barrier()  # no rank leaves (and tears the group down) before rank 0 has written everything
    say(f"done: best {eval_name} top-1 {best_top1:.2f}% in {seconds:.1f}s; run folder {run_dir}")
    return RunResult(run_dir, recipe.epochs, best_top1, final, seconds, dist.rank)


def _out_of_memory(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text \
        or "not enough memory" in text


def _truncate_metrics(path: Path, epoch: int) -> None:
    """Keep only the lines up to ``epoch`` (a resumed run writes the rest again); drop a torn last line."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("epoch", 0) <= epoch:  # epoch lines and the step lines of completed epochs
            kept.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in kept))


def write_curves(history: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(epochs, [h["eval_loss"] for h in history], "o-", label=history[-1]["eval_split"])
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.grid(alpha=0.3)
    b.plot(epochs, [h["train_top1"] for h in history], "o-", label="train top-1")
    b.plot(epochs, [h["eval_top1"] for h in history], "o-", label=f"{history[-1]['eval_split']} top-1")
    b.set_xlabel("epoch"), b.set_ylabel("accuracy %"), b.legend(), b.grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)


def write_summary(run_dir: Path, cfg: dict, history: list[dict], best: float, seconds: float) -> None:
    last = history[-1] if history else {}
    ips = [h["images_per_s"] for h in history]
    lines = [
        f"# {cfg['model']} on {cfg['data']}", "",
        f"- recipe: {cfg['recipe']} ({cfg['recipe_settings']['source']})",
        f"- {len(history)} epochs, batch {cfg['recipe_settings']['batch_size']}, "
        f"{cfg['recipe_settings']['optimizer']} lr {cfg['recipe_settings']['lr']}, {cfg['precision']}"
        f"{' channels-last' if cfg['channels_last'] else ''}, seed {cfg['seed']}",
        f"- final {last.get('eval_split', 'eval')} top-1 {last.get('eval_top1', float('nan')):.2f}%, "
        f"top-5 {last.get('eval_top5', float('nan')):.2f}%; best top-1 {best:.2f}%",
        f"- training speed: median {sorted(ips)[len(ips) // 2] if ips else 0:,.0f} images/s; "
        f"wall time {seconds:.1f} s (this process)",
        f"- hardware: {cfg['hardware']['device']}, {cfg['hardware']['cpu_count']} CPUs, "
        f"torch {cfg['versions']['torch']}",
        "", "| epoch | train loss | train top-1 | eval loss | eval top-1 | eval top-5 | img/s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for h in history:
        lines.append(f"| {h['epoch']} | {h['train_loss']:.4f} | {h['train_top1']:.2f} | {h['eval_loss']:.4f} | "
                     f"{h['eval_top1']:.2f} | {h['eval_top5']:.2f} | {h['images_per_s']:,.0f} |")
    atomic_write_text(run_dir / "summary.md", "\n".join(lines) + "\n")
