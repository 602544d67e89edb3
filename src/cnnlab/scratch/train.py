"""A LeNet-style network trained on real MNIST with the NumPy engine alone: no torch anywhere.

    conv 5x5, 6  -> ReLU -> max-pool 2x2   # N x 6 x 12 x 12
    conv 5x5, 16 -> ReLU -> max-pool 2x2   # N x 16 x 4 x 4
    linear 256 -> 120 -> ReLU -> linear 120 -> 84 -> ReLU -> linear 84 -> 10

This departs from LeNet-5 (LeCun et al. 1998) where the modern recipe is simpler and faster to train: 28x28
inputs without the 32x32 padding, ReLU and max-pooling instead of scaled tanh and trainable subsampling, full
connections from S2 to C3 instead of the paper's partial table, softmax cross-entropy instead of RBF outputs.
Training: SGD with momentum 0.9, batch 32, the learning rate decaying linearly to zero; pixels scaled to [0, 1]
and standardised with MNIST's mean 0.1307 and std 0.3081. Everything is seeded, so a run repeats exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from cnnlab.errors import CnnlabError
from cnnlab.scratch.blas import blas_threads
from cnnlab.scratch.layers import (
    SGD,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    SoftmaxCrossEntropy,
)
from cnnlab.scratch.mnist import load_mnist

MEAN, STD = 0.1307, 0.3081


def lenet(rng=0, dtype=np.float32) -> Sequential:
    rng = np.random.default_rng(rng)
    return Sequential(
        Conv2d(1, 6, 5, rng=rng, dtype=dtype, input_grad=False), ReLU(), MaxPool2d(2),  # N x 6 x 12 x 12
        Conv2d(6, 16, 5, rng=rng, dtype=dtype), ReLU(), MaxPool2d(2),                    # N x 16 x 4 x 4
        Flatten(),                                                                       # N x 256
        Linear(256, 120, rng=rng, dtype=dtype), ReLU(),
        Linear(120, 84, rng=rng, dtype=dtype), ReLU(),
        Linear(84, 10, rng=rng, dtype=dtype),
    )


def _prepare(images: np.ndarray, dtype) -> np.ndarray:
    return ((images.astype(dtype) / 255 - MEAN) / STD)[:, None]  # N x 1 x 28 x 28


def accuracy(model: Sequential, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> float:
    correct = 0
    for i in range(0, len(images), batch_size):
        correct += int((model.forward(images[i:i + batch_size]).argmax(axis=1) == labels[i:i + batch_size]).sum())
    return correct / max(len(images), 1)


@dataclass
class ScratchResult:
    test_accuracy: float
    train_images: int
    test_images: int
    epochs: int
    seconds: float
    parameters: int
    history: list[dict] = field(default_factory=list)

    def text(self) -> str:
        return (f"test accuracy {self.test_accuracy * 100:.2f}% on {self.test_images:,} MNIST test images after "
                f"{self.epochs} epoch{'s' * (self.epochs != 1)} on {self.train_images:,} training images, "
                f"{self.seconds:.1f} s; NumPy only, {self.parameters:,} parameters\n")


def train_mnist(train_images: int = 20_000, epochs: int = 3, seed: int = 0, batch_size: int = 32, lr: float = 0.02,
                momentum: float = 0.9, test_images: int = 10_000, data_dir=None, threads: int | None = 1,
                log=None) -> ScratchResult:
    """Train ``lenet`` on the first ``train_images`` of a seeded shuffle of MNIST's 60,000 training images and
    report the accuracy on the first ``test_images`` of the official 10,000 test images. ``threads``: NumPy's
    BLAS threads (None leaves them; see ``cnnlab.scratch.blas``). ``log`` gets one line per epoch."""
    for name, value, most in (("train_images", train_images, 60_000), ("test_images", test_images, 10_000)):
        if not 1 <= value <= most:
            raise CnnlabError(f"--{name.replace('_', '-')} must be between 1 and {most:,}, not {value}")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise CnnlabError("epochs and batch size must be 1 or more and the learning rate positive")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise CnnlabError(f"`seed` must be a whole number from 0 to 2^63 - 1, got {seed!r}", params=("seed",))
    with blas_threads(threads), np.errstate(over="ignore", invalid="ignore"):  # divergence: the loss check says it
        return _train(train_images, epochs, seed, batch_size, lr, momentum, test_images, data_dir, log)


def _train(train_images, epochs, seed, batch_size, lr, momentum, test_images, data_dir, log) -> ScratchResult:
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    x_all, y_all = load_mnist("train", data_dir)
    pick = rng.permutation(len(x_all))[:train_images]
    x_train, y_train = _prepare(x_all[pick], np.float32), y_all[pick]
    x_test, y_test = load_mnist("test", data_dir)
    x_test, y_test = _prepare(x_test[:test_images], np.float32), y_test[:test_images]

    model = lenet(rng)
    loss_fn = SoftmaxCrossEntropy()
    opt = SGD(model.parameters(), lr=lr, momentum=momentum)
    steps_per_epoch = -(-train_images // batch_size)
    total, step = steps_per_epoch * epochs, 0
    history = []
    for epoch in range(1, epochs + 1):
        order = rng.permutation(train_images)
        loss_sum = correct = 0.0
        for i in range(0, train_images, batch_size):
            idx = order[i:i + batch_size]
            logits = model.forward(x_train[idx])
            loss = loss_fn(logits, y_train[idx])
            if not np.isfinite(loss):  # diverged: every later step would be NaN too (as the trainer stops)
                raise CnnlabError(f"the loss became {loss} at epoch {epoch}, step {i // batch_size + 1}; training "
                                  f"stopped. Lower `lr` (now {lr}) and start again", params=("lr",))
            loss_sum += loss * len(idx)
            correct += int((logits.argmax(axis=1) == y_train[idx]).sum())
            model.backward(loss_fn.backward().astype(np.float32))
            opt.lr = lr * (1 - step / total)  # linear decay to zero
            opt.step()
            step += 1
        test_acc = accuracy(model, x_test, y_test)
        row = {"epoch": epoch, "loss": loss_sum / train_images, "train_accuracy": correct / train_images,
               "test_accuracy": test_acc, "seconds": time.perf_counter() - start}
        history.append(row)
        if log:
            log(f"epoch {epoch}/{epochs}  loss {row['loss']:.4f}  train acc {row['train_accuracy'] * 100:.2f}%  "
                f"test acc {test_acc * 100:.2f}%  {row['seconds']:.1f} s")
    return ScratchResult(history[-1]["test_accuracy"], train_images, len(x_test), epochs,
                         time.perf_counter() - start, model.num_parameters(), history)
