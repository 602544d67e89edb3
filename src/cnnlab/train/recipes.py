"""Training recipes as data, one per paper (or lecture), listed by ``cnnlab recipes``.

A recipe fixes the optimiser, learning rate and schedule, batch size, weight decay, label smoothing, epochs
and augmentation; command-line flags override any of them, and the run folder records what was used.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass, field, replace

from cnnlab.data.memory import Augment
from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class Recipe:
    name: str
    models: tuple[str, ...]  # wildcards of the models it is the default for
    data: str
    source: str  # where the settings come from
    epochs: int
    batch_size: int
    optimizer: str  # "sgd", "nesterov", "rmsprop", "adam"
    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"  # "constant", "steps", "plateau", "cosine", "onecycle"
    milestones: tuple[int, ...] = ()  # epochs at which "steps" divides the rate by 1/gamma
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    patience: int = 2  # "plateau": epochs without improvement before dividing
    label_smoothing: float = 0.0
    clip_grad_norm: float = 0.0  # 0: no clipping
    augment: Augment = field(default_factory=Augment)
    val_split: float = 0.0
    note: str = ""

    def as_dict(self) -> dict:
        d = asdict(self)
        d["augment"] = self.augment.as_dict()
        return d

    def lr_factor(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        """Multiplier of ``lr`` at an optimiser step (plateau division is applied on top, per epoch)."""
        warm = self.warmup_epochs * steps_per_epoch
        if warm and step < warm:
            return (step + 1) / warm
        if self.schedule == "steps":
            epoch = step // max(1, steps_per_epoch)
            return self.gamma ** sum(epoch >= m for m in self.milestones)
        if self.schedule == "cosine":
            t = (step - warm) / max(1, total_steps - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        if self.schedule == "onecycle":  # linear up for 20% of the run, then cosine down to 1/1000
            up = max(1, int(0.2 * total_steps))
            if step < up:
                return 0.1 + 0.9 * step / up
            t = (step - up) / max(1, total_steps - up)
            return 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        return 1.0


RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe(
        "lenet5_mnist", ("lenet5", "lenet5_modern"), "mnist",
        "LeCun et al. 1998 (data, 28x28 digits centred in 32x32); schedule and optimiser ours",
        epochs=8, batch_size=128, optimizer="nesterov", lr=0.01, momentum=0.9, schedule="onecycle",
        augment=Augment(pad_to=32, crop_pad=2),
        note="the paper trained 20 passes with stochastic diagonal Levenberg-Marquardt; SGD with Nesterov "
             "momentum and a one-cycle schedule reaches 99% in 8 epochs. Random translations of up to 2 "
             "pixels stand in for the paper's distortions. lr 0.02 diverges: the RBF head's squared "
             "distances give large gradients"),
    Recipe(
        "alexnet_imagenet", ("alexnet", "alexnet_paper", "zfnet"), "folder:imagenet",
        "Krizhevsky et al. 2012, Sec. 5 (Zeiler & Fergus 2013 use the same)",
        epochs=90, batch_size=128, optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4,
        schedule="plateau", patience=5, augment=Augment(flip=True),
        note="lr divided by 10 when the validation error stops improving (three times in the paper)"),
    Recipe(
        "vgg_imagenet", ("vgg11*", "vgg13*", "vgg16*", "vgg19*"), "folder:imagenet",
        "Simonyan & Zisserman 2015, Sec. 3.1",
        epochs=74, batch_size=256, optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4,
        schedule="plateau", patience=5, augment=Augment(flip=True),
        note="dropout 0.5 on the first two FC layers is part of the model; lr divided by 10 on plateau"),
    Recipe(
        "vgg_cifar", ("vgg_cifar", "nin_cifar"), "cifar10",
        "the lecture's CIFAR-10 assignment",
        epochs=30, batch_size=128, optimizer="nesterov", lr=0.05, momentum=0.9, weight_decay=5e-4,
        schedule="onecycle", augment=Augment(crop_pad=4, flip=True),
        note="random 32x32 crops of the 4-pixel zero-padded image and horizontal flips"),
]}


def list_recipes() -> list[Recipe]:
    return list(RECIPES.values())


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise CnnlabError(f"unknown recipe {name!r}; `cnnlab recipes` lists {', '.join(RECIPES)}") from None


def recipe_for(model: str) -> Recipe:
    for r in RECIPES.values():
        if any(fnmatch.fnmatchcase(model, pat) for pat in r.models):
            return r
    raise CnnlabError(f"no recipe is the default for {model!r}; pick one with --recipe "
                      f"({', '.join(RECIPES)})")


def override(r: Recipe, **changes) -> Recipe:
    return replace(r, **{k: v for k, v in changes.items() if v is not None})
