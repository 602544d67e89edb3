"""One way in to any dataset: which images a network sees and how they are prepared (:class:`DataView`),
opened for training or evaluation, in one process or as one rank of a data-parallel world
(:func:`open_data`), and single image files prepared the same way (:func:`load_image`).

The in-memory families (mnist, cifar10, ...: decoded once, augmented by the batch) and image folders
(``folder:PATH``: decoded by DataLoader workers) differ in how they are stored and prepared; this module is
the one place that tells them apart."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from cnnlab.errors import CnnlabError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DataView:
    """Which images a network sees, prepared how: everything needed to serve the same images again."""

    data: str  # "mnist", "cifar10", ... or "folder:PATH"
    channels: int  # the network's input channels
    size: int  # the network's input height = width; image folders are resized and cropped to it
    augment: dict = field(default_factory=dict)  # in-memory data: the recipe's Augment (pad_to also applies in eval)
    val_split: float | None = None  # the fraction of the training images held out as "val"
    seed: int = 0  # the hold-out's, the data order's and the augmentation's seed
    train_limit: int | None = None  # a class-balanced subset of the training images (in-memory data)

    @property
    def is_folder(self) -> bool:
        return self.data.startswith("folder:")

    @property
    def folder(self) -> str:
        return self.data.split(":", 1)[1]

    @property
    def pad_to(self) -> int:
        return int(self.augment.get("pad_to", 0) or 0)

    def with_data(self, data: str | None) -> DataView:
        """The same preparation for other images (``data`` None: these). An image folder takes no
        ``train_limit`` (a subset of the run's in-memory training images)."""
        from dataclasses import replace

        if not data or data == self.data:
            return self
        return replace(self, data=data, train_limit=None if data.startswith("folder:") else self.train_limit)

    def stats(self) -> tuple[tuple, tuple]:
        """The per-channel mean and std the images are normalised with."""
        if self.is_folder:
            from cnnlab.data.folder import IMAGENET_MEAN, IMAGENET_STD

            return (IMAGENET_MEAN, IMAGENET_STD) if self.channels == 3 else ((0.5,), (0.5,))
        from cnnlab.data.sources import spec

        s = spec(self.data)
        return s.mean, s.std


@dataclass
class OpenedData:
    """One split of a dataset, ready to iterate: ``loader`` yields (images, labels) batches."""

    loader: Iterable
    dataset: object  # an ArrayDataset, or a torch Dataset of an image folder
    classes: list[str]
    channels: int
    split: str  # "train", "val" or "test" (an image folder: the name of its evaluation folder)
    view: DataView

    def __len__(self) -> int:
        return len(self.dataset)

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as the network sees its geometry (padded or cropped), H x W x C in 0..1, unnormalised."""
        from cnnlab.data.memory import pad_to

        if self.view.is_folder:
            return display(self.dataset[i][0], self.view)
        return pad_to(self.dataset.images[i:i + 1], self.view.pad_to)[0].permute(1, 2, 0).float().numpy() / 255


def _memory(view: DataView, split: str, data_dir):
    from cnnlab.data.memory import balanced_subset, load, split_train_val

    if split == "test":
        return load(view.data, "test", data_dir)
    ds = load(view.data, "train", data_dir)
    if view.train_limit:
        ds = balanced_subset(ds, view.train_limit, view.seed)
    if view.val_split:
        train, val = split_train_val(ds, view.val_split, view.seed)
        return train if split == "train" else val
    if split == "val":
        raise CnnlabError(f"{view.data} has no validation split here: it is held out only when training with a "
                          f"val_split; use the test split")
    return ds


def open_data(view: DataView, split: str, *, train: bool = False, batch_size: int = 256, data_dir=None,
              rank: int = 0, world: int = 1, device="cpu", channels_last: bool = False, crops10: bool = False,
              explicit_val_split: bool = False, workers: int | None = None,
              skip_bad_images: bool | None = None) -> OpenedData:
    """``split`` of the images ``view`` names: "train" (the training images, less a held-out fraction),
    "val" (that fraction) or "test" (an image folder: its val/ or test/ folder, or the held-out fraction).
    ``train`` serves them for training: shuffled, augmented, the last incomplete batch dropped. With ``world``
    > 1, ``batch_size`` is the global batch and this rank gets its share. ``crops10``: image folders keep the
    whole resized square so ten crops can be cut from it. ``explicit_val_split``: the hold-out was asked for
    by the user (refused for a folder that is split already) rather than by a recipe (ignored there).
    ``skip_bad_images``: an image folder's files that cannot be read are left out (and counted in a note)
    rather than stopping the pass with a sentence naming the first (which offers `skip_bad_images` when it is
    False; None: the caller has no such option)."""
    if split not in SPLITS:
        raise CnnlabError(f"`split` must be one of {', '.join(SPLITS)}, got {split!r}", params=("split",))
    if view.is_folder:
        from cnnlab.data.folder import folder_datasets, folder_loader

        if view.train_limit:
            raise CnnlabError("`train_limit` works with the in-memory datasets (mnist, cifar10, ...), not image "
                              "folders: copy the images you want into a smaller folder instead",
                              params=("train_limit",))
        if view.folder in ("", "imagenet"):
            raise CnnlabError("this recipe trains on an image folder: pass `data` folder:PATH "
                              "(PATH/<class>/*.jpg, or PATH/train and PATH/val)", params=("data",))
        train_ds, eval_ds, classes, eval_name = folder_datasets(
            view.folder, view.size, view.val_split or None, view.seed, view.channels, crops10=crops10,
            explicit=explicit_val_split, augment_train=train)
        ds, name = (train_ds, "train") if split == "train" else (eval_ds, eval_name)
        loader = folder_loader(ds, batch_size, train, view.seed, workers, rank=rank, world=world,
                               skip_bad_images=skip_bad_images)
        return OpenedData(loader, ds, list(classes), view.channels, name, view)
    from cnnlab.data.memory import Augment, MemoryLoader

    ds = _memory(view, split, data_dir)
    loader = MemoryLoader(ds, batch_size, train, Augment(**view.augment), view.seed, drop_last=train, device=device,
                          channels_last=channels_last, rank=rank, world=world)
    return OpenedData(loader, ds, list(ds.classes), ds.channels, split, view)


def load_image(path, view: DataView) -> torch.Tensor:
    """An image file as a network of ``view`` sees it: 1 x C x H x W, preprocessed as its evaluation images are
    (resized to the dataset's size and padded, or the image-folder protocol's resize and centre crop)."""
    from cnnlab.data.images import read_image

    return prepare_image(read_image(path, "L" if view.channels == 1 else "RGB"), view)


def prepare_image(img, view: DataView) -> torch.Tensor:
    """A Pillow image of the view's mode ("L" for one channel, else "RGB") as :func:`load_image` prepares a file
    (the lab's uploads come this way: decoded from memory, prepared the same)."""
    from torchvision.transforms.v2 import functional as TF

    from cnnlab.data.memory import pad_to, preprocess

    img = TF.pil_to_tensor(img)
    if view.is_folder:
        from cnnlab.data.folder import transforms

        return transforms(view.size, False, view.channels)(img)[None]
    from cnnlab.data.sources import spec

    s = spec(view.data)
    img = TF.resize(img, [s.size, s.size], antialias=True)
    return preprocess(pad_to(img[None], view.pad_to), s.mean, s.std)


def display(x: torch.Tensor, view: DataView) -> np.ndarray:
    """A preprocessed image (1 x C x H x W) back to H x W x C values in 0..1."""
    x = x.detach().float().cpu().reshape(-1, *x.shape[-2:])
    mean, std = view.stats()
    img = x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    return img.clamp(0, 1).permute(1, 2, 0).numpy()
