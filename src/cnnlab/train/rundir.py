"""The run folder a training run writes (its layout: :mod:`cnnlab.runs`): config.json, metrics.jsonl (kept up
to the checkpoint's epoch when a run resumes), last.pt and best.pt written atomically, curves.png and
summary.md (and, from :mod:`.watch`, health.jsonl and snapshots/). Under data parallelism only rank 0 writes (``main``).

No run is lost or overwritten: a resumed run goes on in the folder it is resumed from, wherever that folder now
is (or in ``out``); a new run is refused a folder that holds a run unless asked to ``overwrite`` it; a run
that fails before its first checkpoint takes back what it wrote; temporary files that a killed write left are
removed when the run starts again; and a best.pt that a kill left behind last.pt is repaired on resume."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_open, atomic_savefig, atomic_write_json, atomic_write_text, load_torch
from cnnlab.runs import RunInfo, save_checkpoint

# the files a run writes (and the temporary files of their atomic writes, ".NAME.*.tmp")
RUN_FILES = ("config.json", "metrics.jsonl", "last.pt", "best.pt", "curves.png", "summary.md")
# what it writes for watching it learn (cnnlab.train.watch: health records, a folder of snapshots), and the
# lab's control file: they belong to the run too, and go with it
WATCH_FILES = ("health.jsonl", "snapshots", "control.json")


def holds_run(path: Path) -> bool:
    """Whether ``path`` holds a run that can be resumed or used (a checkpoint). A folder with only the config
    and metrics of a run killed before its first checkpoint holds nothing to lose: a new run replaces them."""
    return any((path / name).is_file() for name in ("last.pt", "best.pt"))


def check_destination(out: str | None, resume: str | None, overwrite: bool = False) -> None:
    """Refuse to write a run into a folder that holds another run: a new run into ``out``, or a resumed run
    into an ``out`` other than its own folder; ``overwrite`` allows it."""
    if not out or overwrite:
        return
    target = Path(out)
    if resume and target.resolve() == _folder_of(resume).resolve():
        return
    if target.is_dir() and holds_run(target):
        again = f"`resume` {out} to continue it, " if not resume else ""
        raise CnnlabError(f"{out} already holds a run; {again}choose a new `out`, or pass `overwrite` to replace it",
                          params=("resume", "out", "overwrite") if not resume else ("out", "overwrite"))


def _remove_run_files(path: Path) -> None:
    for name in RUN_FILES + WATCH_FILES:
        if (path / name).is_dir() and not (path / name).is_symlink():
            shutil.rmtree(path / name)
        else:
            (path / name).unlink(missing_ok=True)


def _folder_of(resume: str) -> Path:
    p = Path(resume).expanduser()
    return p.parent if p.is_file() else p


CURVES_EVERY = 60.0  # seconds between two drawings of curves.png while a run trains


@dataclass
class RunFolder:
    path: Path
    main: bool = True  # this process writes (rank 0)
    created: bool = False  # this run made the folder
    new: bool = True  # a new run, not a resumed one
    checkpointed: bool = False  # this run has written a checkpoint
    drawn: float = field(default_factory=time.monotonic)  # when curves.png was last drawn (or the run began)

    @classmethod
    def choose(cls, out: str | None, resume: str | None, model: str, data: str, main: bool = True,
               overwrite: bool = False) -> RunFolder:
        """``out``; else the folder of the run being resumed (wherever it now is); else runs/MODEL-DATA-TIME.
        With ``overwrite``, the files of a run that ``out`` holds are removed first (the caller has refused a
        folder holding another run without it: :func:`check_destination`)."""
        if out:
            path = Path(out)
        elif resume:
            path = _folder_of(resume)
        else:
            tag = data.replace(":", "_").replace("/", "_")
            path = Path("runs") / f"{model}-{tag}-{datetime.now():%Y%m%d-%H%M%S}"
        created = not path.exists()
        if main:
            path.mkdir(parents=True, exist_ok=True)
            if out and overwrite and not (resume and path.resolve() == _folder_of(resume).resolve()):
                _remove_run_files(path)  # the old run's, so that none of them is taken for the new run's
            remove_temporaries(path)
        return cls(path, main, created, new=not resume)  # as a context: abandon() when the run fails

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, kind, e, tb) -> bool:
        if e is not None:
            self.abandon()
        return False

    def abandon(self) -> None:
        """A new run that fails before its first checkpoint takes back the files it wrote (and the folder, if
        it made it), so that no folder is left that looks like a run but holds none."""
        if not (self.main and self.new) or self.checkpointed:
            return
        _remove_run_files(self.path)
        remove_temporaries(self.path)
        if self.created:
            try:
                self.path.rmdir()
            except OSError:
                pass  # something else was put there meanwhile: leave it

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    def start(self, config: dict, epoch: int, history: list[dict] = ()) -> None:
        """Write config.json; keep only the metrics of the epochs the run resumes after (``history``, the
        checkpoint's epoch records, restores an epoch line that a kill between the checkpoint and its line
        left out)."""
        if self.main:
            atomic_write_json(self.path / "config.json", config)
            truncate_metrics(self.metrics, epoch, history)

    def log(self, record: dict) -> None:
        self.write_line("metrics.jsonl", record)

    def write_line(self, name: str, record: dict) -> None:
        """Append ``record`` as one JSON line to the file ``name`` (one write: a reader sees whole lines, or a
        torn last one that it skips)."""
        if self.main:
            with open(self.path / name, "a") as f:
                f.write(json.dumps(record) + "\n")

    def save(self, info: RunInfo, model_state: dict, training: dict, best: bool) -> None:
        """last.pt, then best.pt when this epoch is the best (a kill between the two is repaired on resume:
        :func:`repair_best`)."""
        if self.main:
            save_checkpoint(self.last, info, model_state, training)
            self.checkpointed = True
            if best:
                save_checkpoint(self.path / "best.pt", info, model_state, training)

    def curves(self, history: list[dict], final: bool = False) -> None:
        """Draw curves.png at the end of a run (``final``: done or stopped), and after an epoch once a minute
        has passed since the last drawing: a drawing costs about 0.45 s (0.6 s more for matplotlib's first
        import), a tenth of an MNIST epoch; the lab and ``cnnlab`` read the curves from metrics.jsonl."""
        if self.main and history and (final or time.monotonic() - self.drawn >= CURVES_EVERY):
            write_curves(history, self.path / "curves.png")
            self.drawn = time.monotonic()

    def summary(self, config: dict, history: list[dict], best: float, seconds: float) -> None:
        if self.main:
            write_summary(self.path, config, history, best, seconds)


def truncate_metrics(path: Path, epoch: int, history: list[dict] = ()) -> None:
    """Keep only the lines up to ``epoch`` (a resumed run writes the rest again); drop a torn last line; add
    the epoch lines of ``history`` (the checkpoint's records) that the file lacks."""
    if not path.exists() and not history:
        return
    kept, logged = [], set()
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("epoch", 0) <= epoch:  # epoch lines and the step lines of completed epochs
            kept.append(line)
            if rec.get("kind") == "epoch":
                logged.add(rec["epoch"])
    kept += [json.dumps(h) for h in history if h.get("epoch") not in logged and h.get("epoch", 0) <= epoch]
    atomic_write_text(path, "".join(k + "\n" for k in kept))


def remove_temporaries(path: Path) -> None:
    """The temporary files (".last.pt.x8f2.tmp") that a kill in the middle of an atomic write left."""
    for name in RUN_FILES + WATCH_FILES:
        for tmp in path.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
    for tmp in (path / "snapshots").glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def repair_best(folder: Path, checkpoint: dict) -> bool:
    """Make best.pt hold the best epoch that ``checkpoint`` (the run's last.pt) records, when a kill between
    the writes of last.pt and best.pt left best.pt behind: the best epoch is then last.pt's own, so last.pt is
    copied. Returns whether it repaired."""

    history, best = checkpoint.get("history") or [], checkpoint.get("best_top1")
    if not history or history[-1].get("eval_top1") != best or checkpoint.get("epoch") != history[-1].get("epoch"):
        return False  # the best epoch is an earlier one: best.pt was written then, and nothing since
    if any(h.get("eval_top1", -1) >= best for h in history[:-1]):
        return False  # an earlier epoch scored as well: best.pt holds that one
    path = folder / "best.pt"
    if path.is_file():
        try:
            if load_torch(path, "checkpoint").get("epoch") == checkpoint["epoch"]:
                return False
        except CnnlabError:
            pass  # unreadable: replace it
    with open(folder / "last.pt", "rb") as src, atomic_open(path) as dst:
        shutil.copyfileobj(src, dst)
    return True


def curves_figure(history: list[dict]):
    """Loss and accuracy per epoch, training and evaluation: a matplotlib Figure (shown inline by a notebook).
    Drawn without pyplot, so it neither needs nor changes a backend (a notebook's inline one keeps working)."""
    from cnnlab.fileio import figure

    epochs = [h["epoch"] for h in history]
    split = history[-1]["eval_split"] if history else "eval"
    fig = figure(figsize=(10, 4))
    a, b = fig.subplots(1, 2)
    a.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(epochs, [h["eval_loss"] for h in history], "o-", label=split)
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.grid(alpha=0.3)
    b.plot(epochs, [h["train_top1"] for h in history], "o-", label="train top-1")
    b.plot(epochs, [h["eval_top1"] for h in history], "o-", label=f"{split} top-1")
    b.set_xlabel("epoch"), b.set_ylabel("accuracy %"), b.legend(), b.grid(alpha=0.3)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.96, wspace=0.22)  # tight_layout's margins,
    # fixed: measuring them cost 0.3 s an epoch, 60% of the figure
    return fig


def write_curves(history: list[dict], path: Path) -> None:
    atomic_savefig(curves_figure(history), path, dpi=100)


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
