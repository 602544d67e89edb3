"""Evaluation of trained checkpoints: top-1, top-5, per-class accuracy and the confusion matrix, with
test-time augmentation (flip averaging; AlexNet's ten crops: four corners and the centre, and their mirror
images) and ensembles (softmax averaged over several checkpoints)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnlab.data.view import OpenedData, load_image, open_data
from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_savefig
from cnnlab.runs import open_run


def topk_correct(logits: torch.Tensor, y: torch.Tensor, k: int = 5) -> tuple[int, int]:
    """How many of the labels ``y`` are the top-1 class, and how many among the top ``k`` (fewer with
    fewer classes)."""
    top = logits.topk(min(k, logits.shape[1]), 1).indices
    return int((top[:, 0] == y).sum()), int((top == y[:, None]).any(1).sum())


def ten_crops(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """The four corner crops and the centre crop of ``size`` x ``size`` from a larger batch, and their mirror
    images (Krizhevsky et al. 2012, Sec. 4.1)."""
    h, w = x.shape[-2:]
    offsets = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), ((h - size) // 2, (w - size) // 2)]
    crops = [x[..., dy:dy + size, dx:dx + size] for dy, dx in offsets]
    return crops + [c_.flip(3) for c_ in crops]


def tta_views(x: torch.Tensor, tta: str | None, size: int) -> list[torch.Tensor]:
    """The views averaged at test time; for "crops10" ``x`` is larger than the network's ``size``."""
    if tta is None or tta == "none":
        return [x]
    if tta == "flip":
        return [x, x.flip(3)]
    if tta == "crops10":
        return ten_crops(x, size)
    raise CnnlabError(f"`tta` must be flip or crops10, got {tta!r}", params=("tta",))


def probabilities(models: list[torch.nn.Module], x: torch.Tensor, tta: str | None, size: int) -> torch.Tensor:
    """Softmax averaged over the test-time views and over the models of an ensemble."""
    total, count = 0, 0
    with torch.no_grad():
        for m in models:
            for v in tta_views(x, tta, size):
                total = total + F.softmax(m(v).float(), dim=1)
                count += 1
    return total / count


def _score(models, batches, tta: str | None, size: int, k: int) -> tuple[torch.Tensor, int]:
    """Confusion matrix (true x predicted) and top-5 hits over (images, labels) batches."""
    confusion = torch.zeros(k, k, dtype=torch.long)
    top5 = 0
    for x, y in batches:
        p = probabilities(models, x, tta, size)
        if not torch.isfinite(p).all():
            raise CnnlabError("the network's outputs are not finite (NaN or infinite) on these images, so no "
                              "accuracy can be given; check that the data is the run's own (`data`)", params=("data",))
        top5 += topk_correct(p, y)[1]
        confusion += torch.bincount(y * k + p.argmax(1), minlength=k * k).view(k, k)
    return confusion, top5


@dataclass
class EvalReport:
    classes: list[str]
    confusion: torch.Tensor  # true x predicted counts
    top5_correct: int
    split: str
    tta: str | None
    models: int

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    @property
    def top1(self) -> float:
        return 100.0 * float(self.confusion.diag().sum()) / self.n

    @property
    def top5(self) -> float:
        return 100.0 * self.top5_correct / self.n

    @property
    def per_class(self) -> list[float]:
        rows = self.confusion.sum(1).clamp(min=1)
        return (100.0 * self.confusion.diag() / rows).tolist()

    def as_dict(self) -> dict:
        return {"split": self.split, "images": self.n, "tta": self.tta, "models": self.models,
                "top1": self.top1, "top5": self.top5,
                "per_class": dict(zip(self.classes, self.per_class)), "confusion": self.confusion.tolist()}

    def text(self) -> str:
        what = f"{self.split} set, {self.n:,} images" + (f", TTA {self.tta}" if self.tta else "") + \
               (f", ensemble of {self.models}" if self.models > 1 else "")
        lines = [what, f"top-1 {self.top1:.2f}%   top-5 {self.top5:.2f}%", "", "per class:"]
        width = max(len(c) for c in self.classes)
        for c, acc, total in zip(self.classes, self.per_class, self.confusion.sum(1).tolist()):
            lines.append(f"  {c:<{width}}  {acc:6.2f}%  of {total:,}")
        if len(self.classes) <= 20:
            cell = max(5, len(f"{int(self.confusion.max()):,}") + 1)
            lines += ["", "confusion (rows: true class, columns: predicted):",
                      " " * (width + 2) + "".join(f"{c[:cell - 1]:>{cell}}" for c in self.classes)]
            for c, row in zip(self.classes, self.confusion.tolist()):
                lines.append(f"  {c:<{width}}" + "".join(f"{v:>{cell},}" for v in row))
        return "\n".join(lines) + "\n"

    def plot_beside(self, checkpoint) -> Path:
        """The confusion matrix as a PNG in the run folder of ``checkpoint`` (or beside the checkpoint file),
        named by split and test-time augmentation; returns its path."""
        from cnnlab.runs import resolve

        folder = Path(checkpoint) if Path(checkpoint).is_dir() else resolve(checkpoint).parent
        path = folder / f"confusion-{self.split}{'-' + self.tta if self.tta else ''}.png"
        self.plot(path)
        return path

    def plot(self, path: Path) -> None:
        from matplotlib.figure import Figure  # not pyplot: the caller's backend stays as it is (a notebook's)

        k = len(self.classes)
        fig = Figure(figsize=(1.5 + 0.45 * k, 1.2 + 0.45 * k))
        ax = fig.subplots()
        ax.imshow(self.confusion.numpy(), cmap="Blues")
        ax.set_xticks(range(k), self.classes, rotation=90), ax.set_yticks(range(k), self.classes)
        ax.set_xlabel("predicted"), ax.set_ylabel("true")
        ax.set_title(f"{self.split}: top-1 {self.top1:.2f}%")
        if k <= 20:
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, int(self.confusion[i, j]), ha="center", va="center", fontsize=7)
        fig.tight_layout()
        atomic_savefig(fig, path, dpi=100)


def evaluate(checkpoints: list[str], data: str | None = None, tta: str | None = None, data_dir=None,
             batch_size: int = 256, split: str | None = None, skip_bad_images: bool = False) -> EvalReport:
    """Score checkpoints (an ensemble averages their softmax) on the split they were evaluated on in
    training, or on ``split`` ("test") if given; image folders use their own evaluation split (with
    ``skip_bad_images``, less the files that cannot be read)."""
    from cnnlab.platform import keep_freed_memory

    keep_freed_memory()
    if not checkpoints:
        raise CnnlabError("give at least one run folder or checkpoint to evaluate")
    runs = [open_run(p) for p in checkpoints]
    info = runs[0].info
    if any(r.info.classes != info.classes for r in runs[1:]):
        raise CnnlabError("the checkpoints of an ensemble must be trained on the same classes")
    view = info.view.with_data(data)
    # ten crops of a folder's images come from the resized square (size / 0.875), not from a centre crop
    opened = open_data(view, split or info.eval_split, batch_size=batch_size, data_dir=data_dir,
                       crops10=tta == "crops10", skip_bad_images=skip_bad_images)
    if opened.classes != list(info.classes):
        theirs, ours = list(info.classes), list(opened.classes)
        first = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), None)
        differ = (f" (class {first} is {theirs[first]!r} in the run, {ours[first]!r} there)" if first is not None
                  else "")
        raise CnnlabError(f"the run was trained on {_classes(theirs)} but {view.data} has {_classes(ours)}"
                          f"{differ}; evaluate it on images of its own classes (one folder per class, named as "
                          f"the run's)")
    models = [r.model for r in runs]
    if view.is_folder:
        batches, size = opened.loader, view.size
    else:
        batches, size = _memory_views(opened, tta)
    confusion, top5 = _score(models, batches, tta, size, len(opened.classes))
    return EvalReport(opened.classes, confusion, top5, opened.split, tta, len(models))


def _classes(names) -> str:
    """``names`` in a few words: "3 classes (cat, dog, fox)", the first 5 of more."""
    shown = ", ".join(list(names)[:5]) + (", ..." if len(names) > 5 else "")
    return f"{len(names)} class{'es' * (len(names) != 1)} ({shown})"


def _memory_views(opened: OpenedData, tta: str | None):
    """In-memory batches, and the size the network sees; for ten crops each image padded with black, as the
    training crops are, so that the crops are translations of it."""
    from cnnlab.data.memory import preprocess

    ds, pad_to = opened.dataset, opened.view.pad_to
    size = ds.images.shape[-1] if not pad_to else max(pad_to, ds.images.shape[-1])
    pad = opened.view.augment.get("crop_pad") or 4
    black = preprocess(torch.zeros(1, ds.channels, 1, 1, dtype=torch.uint8), ds.mean, ds.std)

    def batches():
        for x, y in opened.loader:
            yield (F.pad(x - black, (pad,) * 4) + black if tta == "crops10" else x), y

    return batches(), size


def predict(checkpoint: str, images: list[str], k: int = 5) -> list[tuple[str, list[tuple[str, float]]]]:
    """Top-k classes with probabilities for image files."""
    run = open_run(checkpoint)
    out = []
    for path in images:
        x = load_image(path, run.info.view)
        with torch.no_grad():
            logits = run.model(x).float()
        if not torch.isfinite(logits).all():
            weights = all(torch.isfinite(t).all() for t in run.model.state_dict().values() if t.is_floating_point())
            raise CnnlabError(f"{checkpoint} gives outputs that are not finite (NaN or infinite) for {path}: "
                              + ("its outputs overflow; check the image and the run's input size" if weights else
                                 "the checkpoint's weights are not finite; use best.pt or an earlier checkpoint"))
        p = F.softmax(logits, 1)[0]
        top = p.topk(min(k, p.numel()))
        out.append((str(path), [(run.info.classes[i], float(v)) for v, i in zip(top.values, top.indices)]))
    return out


def render_predictions(predictions: list[tuple[str, list[tuple[str, float]]]]) -> str:
    """``predict``'s result as text: each image's path, then its classes with their probabilities."""
    lines = []
    for path, top in predictions:
        lines.append(path)
        lines += [f"  {p * 100:6.2f}%  {c}" for c, p in top]
    return "\n".join(lines) + "\n"
