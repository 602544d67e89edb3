"""Image folders (``folder:PATH``): one sub-folder per class, either under ``train/`` and ``val/`` or split by a
fraction. Decoded by torchvision with transforms v2 in DataLoader workers: random-resized-crop and flip for
training; resize and centre crop for evaluation (the ImageNet protocol, resize to size/0.875)."""

from __future__ import annotations

from pathlib import Path

import warnings

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from cnnlab.data.images import is_image_name, read_image
from cnnlab.errors import CnnlabError, CnnlabNote

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_classes(root: Path) -> list[str]:
    if root.exists() and not root.is_dir():
        raise CnnlabError(f"{root} is a file, not a folder; `data` folder:PATH takes a folder of class folders "
                          f"(PATH/<class>/*.jpg, or PATH/train and PATH/val)", params=("data",))
    if not root.is_dir():
        raise CnnlabError(f"image folder {root} does not exist")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise CnnlabError(f"{root} has no class sub-folders; expected {root}/<class>/<image files>")
    from cnnlab.data.sources import DATASETS

    official = {s.folder for s in DATASETS.values()} & set(classes)
    if official:
        raise CnnlabError(f"{root} holds cnnlab's dataset files ({', '.join(sorted(official))}), not class folders "
                          f"of images; pass `data` mnist, cifar10, ... with `data_dir` {root}",
                          params=("data", "data_dir"))
    for c in classes:
        if not any(is_image_name(f) for f in (root / c).iterdir()):
            raise CnnlabError(f"class folder {root / c} holds no images; remove it or add images")
    return classes


def transforms(size: int, train: bool, channels: int = 3, crops10: bool = False):
    """``crops10``: keep the whole resized square (size / 0.875) so ten crops of ``size`` can be cut from it."""
    from torchvision.transforms import v2

    ops = [v2.ToImage()]
    if train:
        ops += [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        big = round(size / 0.875)
        ops += [v2.Resize(big, antialias=True), v2.CenterCrop(big if crops10 else size)]
    if channels == 1:
        ops.append(v2.Grayscale())
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(ops)


def _image_folder(root: Path, transform):
    """torchvision's ImageFolder, reading its files with :func:`cnnlab.data.images.read_image`: a file it cannot
    read is a sentence naming it."""
    from torchvision.datasets import ImageFolder

    return ImageFolder(str(root), transform=transform, loader=read_image, is_valid_file=is_image_name)


def folder_datasets(path: str, size: int, val_split: float | None, seed: int, channels: int = 3,
                    crops10: bool = False, explicit: bool = True, augment_train: bool = True):
    """(train, eval, classes, eval split name). A folder with train/ and val/ (or test/) is split already; a
    folder of classes is split at random (``seed``) with ``val_split`` of it (default 0.2) held out. A
    ``val_split`` the user gave (``explicit``) is refused for a folder that is split already; one that came
    from a recipe is ignored there. ``augment_train`` False gives the training images the evaluation
    preprocessing (for embeddings)."""
    root = Path(path).expanduser()
    if (root / "train").is_dir():
        classes = _check_classes(root / "train")
        train = _image_folder(root / "train", transforms(size, augment_train, channels))
        if val_split and explicit:
            raise CnnlabError(f"{root} already has a train/ folder; `val_split` applies to a folder of classes",
                              params=("val_split",))
        evald = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
        if evald is None:
            raise CnnlabError(f"{root} has train/ but no val/ or test/ folder; add one or point at a class folder "
                              f"and use `val_split`", params=("val_split",))
        if _check_classes(evald) != classes:
            raise CnnlabError(f"{evald} and {root / 'train'} have different class folders")
        return (train, _image_folder(evald, transforms(size, False, channels, crops10)), classes,
                evald.name)
    classes = _check_classes(root)
    fraction = val_split or 0.2
    full_train = _image_folder(root, transforms(size, augment_train, channels))
    full_eval = _image_folder(root, transforms(size, False, channels, crops10))
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(full_train), generator=g).tolist()
    n_val = max(1, round(len(perm) * fraction))
    if n_val >= len(perm):
        raise CnnlabError(f"{root} holds {len(perm)} image{'s' * (len(perm) != 1)}: holding out {fraction:g} of "
                          f"them for validation leaves none to train on; add images, or lower `val_split`",
                          params=("val_split",))
    return Subset(full_train, perm[n_val:]), Subset(full_eval, perm[:n_val]), classes, "val"


def folder_loader(ds, batch_size: int, train: bool, seed: int, workers: int | None = None, rank: int = 0,
                  world: int = 1, skip_bad_images: bool | None = None) -> FolderLoader:
    """A DataLoader over an image folder. With ``world`` > 1, ``batch_size`` is the global batch and this
    rank gets 1/world of it: training through a DistributedSampler (reshuffled per epoch with ``seed`` once
    the trainer calls ``set_epoch``; the last incomplete global batch is dropped), evaluation over the images
    rank, rank + world, ... so every image is scored exactly once. An image that cannot be read stops it with a
    sentence naming the file (which offers ``skip_bad_images`` when it is False, not None), or with
    ``skip_bad_images`` is left out (a note counts them)."""
    g = torch.Generator().manual_seed(seed)
    workers = min(4, torch.get_num_threads()) if workers is None else workers
    if world > 1:
        from torch.utils.data import DistributedSampler

        if train:
            sampler = DistributedSampler(ds, world, rank, shuffle=True, seed=seed, drop_last=True)
            return FolderLoader(DataLoader(_Checked(ds), batch_size=batch_size // world, sampler=sampler,
                                           num_workers=workers, persistent_workers=workers > 0, drop_last=True,
                                           collate_fn=_collate), skip_bad_images)
        ds = Subset(ds, range(rank, len(ds), world))
    return FolderLoader(DataLoader(_Checked(ds), batch_size=batch_size, shuffle=train, generator=g,
                                   num_workers=workers, persistent_workers=workers > 0, drop_last=False,
                                   collate_fn=_collate), skip_bad_images)


# A DataLoader worker that raises wraps the exception in a 40-line traceback of its own; so a worker hands back
# the sentence of an image it cannot read as data, and the loader raises it (or skips the image) in the process
# that iterates.

class _Checked(Dataset):
    """``ds``, with an image that cannot be read given as its sentence (a str) instead of raised."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        try:
            return self.ds[i]
        except CnnlabError as e:
            return str(e)


def _collate(samples: list):
    """(the batch of the samples that were read, or None; the sentences of those that were not)."""
    from torch.utils.data import default_collate

    good = [s for s in samples if not isinstance(s, str)]
    return (default_collate(good) if good else None), [s for s in samples if isinstance(s, str)]


class FolderLoader:
    """The DataLoader's batches, less the images that could not be read: the first one stops the pass with its
    sentence, or with ``skip_bad_images`` they are left out and counted (``skipped``) in a note at the end of a
    pass that met new ones; the sentence offers ``skip_bad_images`` if it is False (None: the caller offers no
    skipping). Other attributes (``sampler``, ``dataset``) are the DataLoader's."""

    def __init__(self, loader: DataLoader, skip_bad_images: bool | None = None):
        self.loader, self.skip_bad_images, self.skipped = loader, skip_bad_images, {}

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.__dict__["loader"], name)

    def __iter__(self):
        before = len(self.skipped)
        for batch, bad in self.loader:
            if bad and self.skip_bad_images is None:
                raise CnnlabError(bad[0])
            if bad and not self.skip_bad_images:
                raise CnnlabError(f"{bad[0]} (or pass `skip_bad_images` to leave out the images that cannot be "
                                  f"read)", params=("skip_bad_images",))
            self.skipped.update(dict.fromkeys(bad))
            if batch is not None:
                yield batch
        if len(self.skipped) > before:
            first = next(iter(self.skipped))
            n = len(self.skipped)
            warnings.warn(CnnlabNote(f"left out {n:,} image{'s' * (n != 1)} that cannot be read; the first: "
                                     f"{first}"), stacklevel=2)
