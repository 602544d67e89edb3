"""Evaluation of trained checkpoints: top-1, top-5, per-class accuracy and the confusion matrix, with
test-time augmentation (flip averaging; AlexNet's ten crops: four corners and the centre, and their mirror
images) and ensembles (softmax averaged over several checkpoints)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_savefig
from cnnlab.models.registry import create_model
from cnnlab.train.checkpoint import load_checkpoint, resolve


def model_from_checkpoint(path) -> tuple[torch.nn.Module, dict]:
    state = load_checkpoint(path)
    model = create_model(state["model_name"], num_classes=state["num_classes"], in_chans=state["in_chans"],
                         **state.get("model_options", {}))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CnnlabError(f"{resolve(path)} does not fit {state['model_name']} with {state['num_classes']} classes "
                          f"({str(e).splitlines()[0]})") from None
    return model.eval(), state


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
    raise CnnlabError(f"--tta must be flip or crops10, got {tta!r}")


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
        top = probabilities(models, x, tta, size).topk(min(5, k), 1).indices
        top5 += int((top == y[:, None]).any(1).sum())
        confusion += torch.bincount(y * k + top[:, 0], minlength=k * k).view(k, k)
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

    def plot(self, path: Path) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        k = len(self.classes)
        fig, ax = plt.subplots(figsize=(1.5 + 0.45 * k, 1.2 + 0.45 * k))
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
        plt.close(fig)


def evaluate(checkpoints: list[str], data: str | None = None, tta: str | None = None, data_dir=None,
             batch_size: int = 256, split: str | None = None) -> EvalReport:
    """Score checkpoints (an ensemble averages their softmax) on the split they were evaluated on in
    training, or on ``split`` ("test") if given; image folders use their own evaluation split."""
    from cnnlab.data.memory import Augment, MemoryLoader, load, preprocess
    from cnnlab.train.platform import keep_freed_memory

    keep_freed_memory()
    if not checkpoints:
        raise CnnlabError("give at least one run folder or checkpoint to evaluate")
    pairs = [model_from_checkpoint(p) for p in checkpoints]
    models = [m for m, _ in pairs]
    state = pairs[0][1]
    for _, s in pairs[1:]:
        if s["classes"] != state["classes"]:
            raise CnnlabError("the checkpoints of an ensemble must be trained on the same classes")
    data = data or state["data"]
    aug = Augment(**state["recipe"]["augment"])
    if data.startswith("folder:"):
        return _evaluate_folder(models, state, data, tta, batch_size)
    split = split or state.get("eval_split", "test")
    ds = load(data, "test" if split == "test" else "train", data_dir)
    if split == "val":
        from cnnlab.data.memory import split_train_val
        _, ds = split_train_val(ds, state["recipe"]["val_split"], state["config"]["seed"])
    if ds.classes != state["classes"]:
        raise CnnlabError(f"{data} has other classes than the checkpoint was trained on")
    loader = MemoryLoader(ds, batch_size, False, aug)
    size = ds.images.shape[-1] if not aug.pad_to else max(aug.pad_to, ds.images.shape[-1])
    pad = aug.crop_pad or 4  # ten crops of the image padded with black, as the training crops are
    black = preprocess(torch.zeros(1, ds.channels, 1, 1, dtype=torch.uint8), ds.mean, ds.std)

    def batches():
        for x, y in loader:
            yield (F.pad(x - black, (pad,) * 4) + black if tta == "crops10" else x), y

    confusion, top5 = _score(models, batches(), tta, size, len(ds.classes))
    return EvalReport(list(ds.classes), confusion, top5, ds.split, tta, len(models))


def _evaluate_folder(models, state, data, tta, batch_size) -> EvalReport:
    from cnnlab.data.folder import folder_loader, run_folder_datasets

    size = state["input_size"][1]
    # ten crops come from the resized image (size / 0.875), not from a centre crop
    _, evald, classes, split = run_folder_datasets(state, data, crops10=tta == "crops10")
    confusion, top5 = _score(models, folder_loader(evald, batch_size, False, 0), tta, size, len(classes))
    return EvalReport(classes, confusion, top5, split, tta, len(models))


def load_image(path, state: dict) -> torch.Tensor:
    """An image file as the network of ``state`` (a checkpoint's) sees it: 1 x C x H x W, preprocessed as
    its evaluation data are (resized to the dataset's size and padded, or the folder protocol's centre crop)."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as TF

    from cnnlab.data.memory import pad_to, preprocess

    if not Path(path).is_file():
        raise CnnlabError(f"image {path} does not exist")
    try:
        img = decode_image(str(path), mode=ImageReadMode.GRAY if state["in_chans"] == 1 else ImageReadMode.RGB)
    except Exception as e:  # noqa: BLE001 - any decoder failure means the file is not a readable image
        text = str(e)
        if "Unsupported image file" in text:
            why = "it is none of JPEG, PNG, WebP or GIF"
        else:  # keep the decoder's own words, without its C++ source location
            why = re.sub(r"^.*?\.cpp:\d+,\s*", "", text.splitlines()[0] if text else "unreadable")[:200]
        raise CnnlabError(f"{path} is not an image torchvision can read: {why}") from None
    data = state["data"]
    if data.startswith("folder:"):
        from cnnlab.data.folder import transforms
        return transforms(state["input_size"][1], False, state["in_chans"])(img)[None]
    from cnnlab.data.sources import spec
    s = spec(data)
    img = TF.resize(img, [s.size, s.size], antialias=True)
    return preprocess(pad_to(img[None], state["recipe"]["augment"]["pad_to"]), s.mean, s.std)


def predict(checkpoint: str, images: list[str], k: int = 5) -> list[tuple[str, list[tuple[str, float]]]]:
    """Top-k classes with probabilities for image files."""
    model, state = model_from_checkpoint(checkpoint)
    out = []
    for path in images:
        x = load_image(path, state)
        with torch.no_grad():
            p = F.softmax(model(x).float(), 1)[0]
        top = p.topk(min(k, p.numel()))
        out.append((str(path), [(state["classes"][i], float(v)) for v, i in zip(top.values, top.indices)]))
    return out
