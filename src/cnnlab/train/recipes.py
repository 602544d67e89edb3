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
    schedule: str = "constant"  # "constant", "steps", "exp", "plateau", "cosine", "onecycle"
    milestones: tuple[int, ...] = ()  # when "steps" multiplies the rate by gamma (see milestone_unit)
    milestone_unit: str = "epochs"  # or "steps": optimiser iterations, as the ResNet paper counts
    gamma: float = 0.1
    decay_every: float = 0.0  # "exp": multiply by gamma every this many epochs (Inception: 0.94 every 2)
    warmup_epochs: float = 0.0
    warmup_steps: int = 0  # overrides warmup_epochs when set
    warmup_factor: float = 0.0  # 0: linear warm-up from 0; else a constant fraction of lr (ResNet-110's 0.1)
    patience: int = 2  # "plateau": epochs without improvement before dividing
    label_smoothing: float = 0.0
    clip_grad_norm: float = 0.0  # 0: no clipping
    logit_scale: float = 1.0  # the losses (training and evaluation) see the logits times this; accuracy does not
    augment: Augment = field(default_factory=Augment)
    ema: float = 0.0  # > 0: evaluate and keep an exponential moving average of the weights with this decay per step
    tta: str = ""  # "flip": each epoch's evaluation averages the image's and its mirror's softmax
    val_split: float = 0.0
    note: str = ""

    def __post_init__(self):
        if self.schedule == "exp" and self.decay_every <= 0:
            raise ValueError(f"recipe {self.name}: the 'exp' schedule needs decay_every > 0")
        if self.milestone_unit not in ("epochs", "steps"):
            raise ValueError(f"recipe {self.name}: milestone_unit is 'epochs' or 'steps'")
        if not 0.0 <= self.ema < 1.0 or self.tta not in ("", "flip"):
            raise ValueError(f"recipe {self.name}: ema is a decay in [0, 1) and tta '' or 'flip'")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["augment"] = self.augment.as_dict()
        return d

    def lr_factor(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        """Multiplier of ``lr`` at an optimiser step (plateau division is applied on top, per epoch)."""
        warm = self.warmup_steps or self.warmup_epochs * steps_per_epoch
        if warm and step < warm:
            return self.warmup_factor or (step + 1) / warm
        if self.schedule == "steps":
            at = step if self.milestone_unit == "steps" else step // max(1, steps_per_epoch)
            return self.gamma ** sum(at >= m for m in self.milestones)
        if self.schedule == "exp":
            return self.gamma ** math.floor(step / max(1, steps_per_epoch) / self.decay_every)
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
        "lenet5_mnist", ("lenet5",), "mnist",
        "LeCun et al. 1998 (data, 28x28 digits centred in 32x32); schedule and optimiser ours",
        epochs=6, batch_size=128, optimizer="nesterov", lr=0.03, momentum=0.9, schedule="onecycle",
        clip_grad_norm=10.0, logit_scale=0.25, augment=Augment(pad_to=32, crop_pad=1), ema=0.995,
        note="the paper trained 20 passes with stochastic diagonal Levenberg-Marquardt; SGD with Nesterov "
             "momentum, a one-cycle schedule, random shifts of one pixel (standing in for the paper's "
             "distortions) and an average of the weights reach 99.0% on seeds 0-9, after epoch 3 (four), 4 "
             "(five) or 6 (one), and end at 99.04-99.26%; with two-pixel shifts and no average (the recipe "
             "of before) seeds 0-7 reached it by epoch 5-6 and seed 3 not at all. The RBF head's squared "
             "distances (up to ~300) make sharp logits and large gradients: the loss sees them divided by 4 (a "
             "softmax temperature), which allows lr 0.03; on the distances as they are, lr 0.015 diverged. "
             "Clipping the norm at 10 guards the peak rate (without it one seed in three once collapsed)"),
    Recipe(
        "lenet5_modern_mnist", ("lenet5_modern",), "mnist",
        "the lecture's LeNet-5 on MNIST (28x28 digits centred in 32x32); schedule and optimiser ours",
        epochs=4, batch_size=128, optimizer="nesterov", lr=0.05, momentum=0.9, schedule="onecycle",
        clip_grad_norm=10.0, augment=Augment(pad_to=32, crop_pad=1), ema=0.99,
        note="a recipe for time to 99%: seeds 0-9 reach 99.0% after epoch 2 (eight) or 3 (two) and end at "
             "99.08-99.34%. On the way (docs/benchmarks.md): without shifts 2 or 3 epochs end at 98.9-99.2%, "
             "one seed in two under 99%; the average of the weights adds about 0.4 points after epoch 1; "
             "shifts of one pixel end higher than two (99.16-99.34% against 99.08-99.26%, seeds 0-4)"),
    Recipe(
        "alexnet_imagenet", ("alexnet", "alexnet_paper", "zfnet", "nin"), "folder:imagenet",
        "Krizhevsky et al. 2012, Sec. 5 (Zeiler & Fergus 2013 use the same)",
        epochs=90, batch_size=128, optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4,
        schedule="plateau", patience=5, augment=Augment(flip=True),
        note="lr divided by 10 when the validation error stops improving (three times in the paper); Network in "
             "Network gives no ImageNet recipe of its own and borrows this one"),
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
    Recipe(
        "googlenet_imagenet", ("googlenet_paper", "googlenet"), "folder:imagenet",
        "Szegedy et al. 2014, Sec. 6",
        epochs=90, batch_size=128, optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=2e-4,
        schedule="exp", gamma=0.96, decay_every=8, augment=Augment(flip=True),
        note="the paper: asynchronous SGD, momentum 0.9, learning rate decreased by 4% every 8 epochs; it gives "
             "no base rate, batch size, weight decay or length, so lr 0.01, batch 128, weight decay 2e-4 "
             "(the BVLC reference) and 90 epochs are ours. Auxiliary losses are weighted 0.3 (Sec. 5) by the model"),
    Recipe(
        "inception_imagenet", ("inception_v3", "inception_v4", "inception_resnet_v2"), "folder:imagenet",
        "Szegedy et al. 2016 (Inception v3), Sec. 8 and 7; Szegedy et al. 2017 (v4), Sec. 4",
        epochs=100, batch_size=32, optimizer="rmsprop", lr=0.045, momentum=0.0, weight_decay=4e-5,
        schedule="exp", gamma=0.94, decay_every=2, label_smoothing=0.1, clip_grad_norm=2.0,
        augment=Augment(flip=True),
        note="RMSProp with decay 0.9 and epsilon 1.0, lr 0.045 multiplied by 0.94 every two epochs, gradient "
             "clipping at 2.0, label smoothing 0.1 (v3 Sec. 7); the paper trained batch 32 on each of 50 "
             "replicas. Epochs and weight decay 4e-5 (TF-slim's) are ours. v3's aux loss is weighted 0.4"),
    Recipe(
        "resnet_imagenet", ("resnet18", "resnet34", "resnet50*", "resnet101*", "resnet152*", "plain18", "plain34",
                            "resnext*", "wide_resnet*"), "folder:imagenet",
        "He et al. 2016, Sec. 3.4 (ResNeXt and Wide ResNet-50-2 use the same)",
        epochs=120, batch_size=256, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
        schedule="plateau", patience=5, augment=Augment(flip=True),
        note="lr 0.1 divided by 10 when the error plateaus, up to 60 x 10^4 iterations (120 epochs of "
             "ImageNet at batch 256); scale augmentation (random-resized crops) for image folders; no dropout"),
    Recipe(
        "resnet_cifar", ("resnet20", "resnet32", "resnet44", "resnet56", "plain20", "plain32", "plain44",
                         "plain56"), "cifar10",
        "He et al. 2016, Sec. 4.2",
        epochs=182, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
        schedule="steps", milestones=(32000, 48000), milestone_unit="steps", val_split=0.1,
        augment=Augment(crop_pad=4, flip=True),
        note="lr divided by 10 at 32k and 48k iterations, stopped at 64k (182 epochs of the 45k/5k split); "
             "4-pixel padding, random 32x32 crops, horizontal flips"),
    Recipe(
        "resnet_cifar_fast", (), "cifar10",
        "ours, after the fast-training literature: one-cycle (Smith & Topin 2019), label smoothing (Szegedy et "
        "al. 2016), an average of the weights (Polyak & Juditsky 1992), test-time mirroring",
        epochs=32, batch_size=128, optimizer="nesterov", lr=0.2, momentum=0.9, weight_decay=5e-4,
        schedule="onecycle", label_smoothing=0.1, augment=Augment(crop_pad=4, flip=True), ema=0.998, tta="flip",
        note="time to accuracy on a CPU: ResNet-20 to 90% on CIFAR-10 in under 30 minutes on 2 cores "
             "(docs/benchmarks.md); not the paper's recipe, which stays resnet_cifar"),
    Recipe(
        "resnet110_cifar", ("resnet110", "resnet1202", "plain110"), "cifar10",
        "He et al. 2016, Sec. 4.2 (110 and 1202 layers)",
        epochs=182, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
        schedule="steps", milestones=(32000, 48000), milestone_unit="steps", val_split=0.1,
        warmup_steps=400, warmup_factor=0.1, augment=Augment(crop_pad=4, flip=True),
        note="as resnet_cifar, but lr 0.01 for the first 400 iterations (until training error is below 80%), "
             "then 0.1: 0.1 from the start is too large to begin converging"),
    Recipe(
        "stochastic_depth_cifar", ("resnet110_sd",), "cifar10",
        "Huang et al. 2016, Sec. 4",
        epochs=500, batch_size=128, optimizer="nesterov", lr=0.1, momentum=0.9, weight_decay=1e-4,
        schedule="steps", milestones=(250, 375), val_split=0.1, augment=Augment(crop_pad=4, flip=True),
        note="500 epochs, lr divided by 10 after epochs 250 and 375, Nesterov momentum 0.9 without dampening; "
             "45k/5k split as in He et al."),
    Recipe(
        "wrn_cifar", ("wrn*",), "cifar10",
        "Zagoruyko & Komodakis 2016, Sec. 4",
        epochs=200, batch_size=128, optimizer="nesterov", lr=0.1, momentum=0.9, weight_decay=5e-4,
        schedule="steps", milestones=(60, 120, 160), gamma=0.2, augment=Augment(crop_pad=4, flip=True),
        note="lr multiplied by 0.2 at epochs 60, 120 and 160; the best results add dropout 0.3 "
             "(create the model with dropout=0.3)"),
    Recipe(
        "densenet_imagenet", ("densenet121", "densenet161", "densenet169", "densenet201", "densenet264"),
        "folder:imagenet", "Huang et al. 2017, Sec. 4.2",
        epochs=90, batch_size=256, optimizer="nesterov", lr=0.1, momentum=0.9, weight_decay=1e-4,
        schedule="steps", milestones=(30, 60), augment=Augment(flip=True),
        note="Nesterov momentum 0.9 without dampening; lr divided by 10 at epochs 30 and 60; ResNet's "
             "augmentation (random-resized crops and flips for image folders)"),
    Recipe(
        "densenet_cifar", ("densenet40", "densenet_bc100"), "cifar10",
        "Huang et al. 2017, Sec. 4.2 (augmentation Sec. 4.1)",
        epochs=300, batch_size=64, optimizer="nesterov", lr=0.1, momentum=0.9, weight_decay=1e-4,
        schedule="steps", milestones=(150, 225), augment=Augment(crop_pad=4, flip=True),
        note="lr divided by 10 at 50% and 75% of the 300 epochs; without augmentation the paper adds dropout "
             "0.2 after each convolution (create the model with drop_rate=0.2)"),
    Recipe(
        "fractalnet_cifar", ("fractalnet*",), "cifar10",
        "Larsson et al. 2017, Sec. 4",
        epochs=400, batch_size=100, optimizer="sgd", lr=0.02, momentum=0.9,
        schedule="steps", milestones=(200, 300, 350, 375), augment=Augment(crop_pad=4, flip=True),
        note="lr 0.02 divided by 10 each time the remaining epochs halve; drop-path (local 0.15, half the "
             "batches global) is part of the model in training mode; the paper's '+dropout' rates per block "
             "are dropout=(0, 0.1, 0.2, 0.3, 0.4); no weight decay is stated"),
]}


def list_recipes() -> list[Recipe]:
    return list(RECIPES.values())


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise CnnlabError(f"unknown recipe {name!r}; `cnnlab recipes` lists {', '.join(RECIPES)}") from None


def default_recipe(model: str) -> Recipe | None:
    """The recipe that is ``model``'s default, or None."""
    return next((r for r in RECIPES.values() if any(fnmatch.fnmatchcase(model, pat) for pat in r.models)), None)


def recipe_for(model: str) -> Recipe:
    recipe = default_recipe(model)
    if recipe is None:
        raise CnnlabError(f"no recipe is the default for {model!r}; pick one with `recipe` ({', '.join(RECIPES)})",
                          params=("recipe",))
    return recipe


def override(r: Recipe, **changes) -> Recipe:
    return replace(r, **{k: v for k, v in changes.items() if v is not None})


def render_recipes(recipes: list[Recipe] | None = None) -> str:
    """The listing of ``cnnlab recipes``: each recipe's models, settings, schedule, augmentation and source."""
    lines = []
    for r in list_recipes() if recipes is None else recipes:
        sched = r.schedule
        if r.milestones:
            unit = "iterations" if r.milestone_unit == "steps" else "epochs"
            sched += f" x{r.gamma:g} at {unit} {', '.join(map(str, r.milestones))}"
        if r.schedule == "exp":
            sched += f" x{r.gamma:g} every {r.decay_every:g} epochs"
        if r.warmup_steps or r.warmup_epochs:
            span = f"{r.warmup_steps} iterations" if r.warmup_steps else f"{r.warmup_epochs:g} epochs"
            sched += f", warm-up {span}" + (f" at {r.warmup_factor:g} x lr" if r.warmup_factor else "")
        aug = ", ".join(f"{k}={v}" for k, v in r.augment.as_dict().items() if v) or "none"
        default = f"default for {', '.join(r.models)}" if r.models else "ask for it with --recipe"
        lines += [f"{r.name}  ({default})",
                  (f"  data {r.data}; {r.epochs} epochs, batch {r.batch_size}, {r.optimizer} lr {r.lr}"
                  f"{f' momentum {r.momentum}' if r.optimizer in ('sgd', 'nesterov', 'rmsprop') else ''}, "
                  f"weight decay {r.weight_decay}, schedule {sched}"
                  f"{f', label smoothing {r.label_smoothing}' if r.label_smoothing else ''}"
                  f"{f', gradient norm clipped at {r.clip_grad_norm}' if r.clip_grad_norm else ''}"
                  f"{f', loss on logits x {r.logit_scale:g}' if r.logit_scale != 1.0 else ''}"
                  f"{f', moving average of the weights (decay {r.ema:g}) evaluated and kept' if r.ema else ''}"
                  f"{', evaluated on the image and its mirror' if r.tta == 'flip' else ''}; augmentation {aug}"),
                  f"  source: {r.source}"] + ([f"  note: {r.note}"] if r.note else []) + [""]
    return "\n".join(lines)
