"""What a training run is asked to do (:class:`TrainConfig`), what it gives back (:class:`RunResult`), and the
one statement of which settings a resumed run may change (:data:`RESUME_MAY_CHANGE`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.runs import RunInfo


@dataclass
class TrainConfig:
    model: str
    data: str | None = None
    recipe: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    out: str | None = None
    resume: str | None = None
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    quiet: bool = False
    data_dir: str | None = None
    val_split: float | None = None
    log_every: int = 50
    model_options: dict = field(default_factory=dict)
    # transfer learning (cnnlab.transfer): weights to start from, and what to train
    pretrained: str | None = None  # a run folder/checkpoint, a state_dict file or a torchvision weights name
    transfer: str | None = None  # None: train everything; "features": heads only; "finetune": all, see below
    unfreeze: int = 0  # "features": also train the last N blocks of the backbone
    lr_backbone: float | None = None  # "finetune": the backbone's learning rate (default lr / 10)
    train_limit: int | None = None  # train on a class-balanced random subset of this many images
    sync_bn: bool = False  # data parallel: BatchNorm statistics over the global batch (GPUs only)
    overwrite: bool = False  # a new run may replace the run that ``out`` holds
    skip_bad_images: bool = False  # image folders: leave out (and count) the files that cannot be read
    # watching it learn (cnnlab.train.watch): per-layer health every N steps (0: off), snapshots of the first
    # filters, a probe batch's activations and the confusion matrix (every N steps; None: about 4 an epoch)
    health_every: int = 50
    snapshots: bool = True
    snapshot_every: int | None = None

    def __post_init__(self):
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED:
            raise CnnlabError(f"`seed` must be a whole number from 0 to 2^63 - 1 ({MAX_SEED}), got {self.seed!r}",
                              params=("seed",))
        if not _whole(self.health_every) or self.health_every < 0:
            raise CnnlabError(f"`health_every` must be a whole number of steps, 0 or more (0: no health records), "
                              f"got {self.health_every!r}", params=("health_every",))
        if self.snapshot_every is not None and (not _whole(self.snapshot_every) or self.snapshot_every < 1):
            raise CnnlabError(f"`snapshot_every` must be a whole number of steps, 1 or more, got "
                              f"{self.snapshot_every!r}", params=("snapshot_every",))


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


MAX_SEED = 2**63 - 1  # torch's generators take 64 bits; NumPy's no negative seeds


@dataclass
class RunResult:
    """What :func:`cnnlab.train` gives back: where the run lies, how it went (``history``: one record per epoch,
    as in metrics.jsonl), and the run itself (:meth:`open`) and its curves (:meth:`plot`)."""

    run_dir: Path
    epochs: int
    best_top1: float
    final: dict  # the last epoch's record
    seconds: float
    rank: int = 0  # data parallel: this process's rank (only rank 0 wrote the run folder)
    history: list[dict] = field(default_factory=list)

    def plot(self):
        """The loss and accuracy curves as a matplotlib Figure (a notebook shows it inline; ``.savefig`` saves)."""
        from cnnlab.train.rundir import curves_figure

        return curves_figure(self.history)

    def open(self):
        """The trained run as a :class:`cnnlab.runs.Run`: its model (last checkpoint, eval mode) and what it is."""
        from cnnlab.runs import open_run

        return open_run(self.run_dir)


# What a resumed run may change: where and how verbosely it goes on, and for how long. Every other setting is
# the run's own; asking for another value is refused, never ignored.
RESUME_MAY_CHANGE = ("resume", "epochs", "device", "out", "quiet", "data_dir", "overwrite", "skip_bad_images")


def _default(f) -> object:
    return f.default_factory() if callable(f.default_factory) else f.default


def resumed_config(info: RunInfo, given: TrainConfig) -> TrainConfig:
    """The configuration a resumed run goes on with: the run's own settings (``info``, from its checkpoint),
    with the settings of :data:`RESUME_MAY_CHANGE` that ``given`` sets. A setting outside that list that
    ``given`` sets to another value than the run's is refused."""
    saved = {**info.config, "model": info.model}
    own = {f.name: saved.get(f.name, _default(f)) for f in fields(TrainConfig)}
    if own["model"] != given.model:
        raise CnnlabError(f"the checkpoint {given.resume} is a {own['model']} run, not {given.model}")
    changed = [f.name for f in fields(TrainConfig)
               if f.name not in RESUME_MAY_CHANGE and f.name != "model"
               and getattr(given, f.name) != _default(f) and getattr(given, f.name) != own[f.name]]
    if changed:
        named = lambda names: ", ".join(f"`{n}`" for n in names)
        may = [p for p in RESUME_MAY_CHANGE if p != "resume"]
        raise CnnlabError(f"{named(changed)} cannot change a run being resumed: it goes on with its own settings (a "
                          f"resumed run may change only {named(may)}); start a new run to change them, or "
                          f"transfer from the run for other data", params=(*changed, *may))
    own["out"] = None  # a resumed run goes on in the folder it is resumed from, not where it was first written
    for name in RESUME_MAY_CHANGE:
        value = getattr(given, name)
        if value not in (None, False, "auto"):
            own[name] = value
    return TrainConfig(**own)
