"""Hooks that clean up after themselves (the pattern of pytorch-grad-cam, without its known traps).

:func:`capture` puts forward hooks on the named layers inside a context manager and removes every one of
them on exit, also after an error or a ``KeyboardInterrupt``. Three traps of hook-based tools are avoided:

* **In-place activations.** A forward hook that keeps a layer's output keeps a tensor that the next
  ``ReLU(inplace=True)`` (or an ``out += identity``) overwrites, and a module backward hook on such a layer
  makes autograd fail. Our forward hook keeps the output and hands the rest of the network a *copy*: later
  in-place operations change the copy, so the kept values are the layer's true output and the gradient with
  respect to it is exact.
* **Leaks.** Gradients come from ``torch.autograd.grad(score, outputs)``: no tensor hook is left on an
  activation, no ``.grad`` accumulates on the parameters, and the kept outputs are dropped on exit, so
  nothing outlives the call (the test suite checks this over hundreds of calls).
* **Training mode.** The model runs in eval mode inside the context (batch-norm statistics, no dropout)
  and gets its previous mode back on exit.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import nn

from cnnlab.errors import CnnlabError


def layer_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module called ``name`` (as ``model.named_modules()`` and ``cnnlab summary`` spell it)."""
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    names = layer_names(model)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    if len(names) <= 40:
        listing = f"its layers are: {', '.join(names)}"
    else:
        top = [n for n in names if "." not in n]
        listing = f"its top-level layers are: {', '.join(top)} (`cnnlab summary` lists all {len(names)})"
    raise CnnlabError(f"{type(model).__name__} has no layer {name!r}; {hint}{listing}")


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


def in_channels(model: nn.Module) -> int | None:
    """Channels of the image the model reads (its first convolution's input), if it has a convolution."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else None


def as_batch(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One image (C x H x W or 1 x C x H x W) on the model's device and dtype, its channels checked."""
    if not isinstance(x, torch.Tensor):
        raise CnnlabError(f"expected an image tensor (C x H x W), got {type(x).__name__}")
    if not (x.dim() == 3 or (x.dim() == 4 and x.shape[0] == 1)):
        raise CnnlabError(f"expected one image, C x H x W or 1 x C x H x W, got a tensor of shape {tuple(x.shape)}")
    return as_images(model, x)[0]


def as_images(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """One image (C x H x W) or a batch (N x C x H x W) as a batch on the model's device and dtype, its channels
    checked, and whether it came as a batch (Captum's convention: the result is shaped like the input)."""
    if not isinstance(x, torch.Tensor):
        raise CnnlabError(f"expected an image tensor (C x H x W) or a batch (N x C x H x W), got {type(x).__name__}")
    if x.dim() not in (3, 4):
        raise CnnlabError(f"expected an image, C x H x W, or a batch, N x C x H x W, got a tensor of shape "
                          f"{tuple(x.shape)}")
    batched = x.dim() == 4
    if not batched:
        x = x[None]
    if x.shape[0] == 0:
        raise CnnlabError("the batch holds no images (its first dimension is 0)")
    want = in_channels(model)
    if want is not None and x.shape[1] != want:
        raise CnnlabError(f"the image has {x.shape[1]} channel{'s' * (x.shape[1] != 1)} but "
                          f"{type(model).__name__} reads {want}; give a {'grey' if want == 1 else 'colour'} image")
    device, dtype = model_device_dtype(model)
    return x.to(device=device, dtype=dtype), batched


def forward(model: nn.Module, x: torch.Tensor):
    """``model(x)``, with a model that cannot run on this input size reported as the user's mistake."""
    try:
        return model(x)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CnnlabError(f"{type(model).__name__} cannot run on {'x'.join(map(str, x.shape[1:]))} images "
                          f"({first})") from None


class Capture:
    """What the hooks saw: ``outputs[name]`` is the layer's output (detached) at its last call."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self.outputs: dict[str, torch.Tensor] = {}
        self._live: dict[str, torch.Tensor] = {}  # the outputs inside the autograd graph, for gradients
        self._bad: dict[str, str] = {}

    def _hook(self, name: str):
        def hook(module, args, output):
            if not isinstance(output, torch.Tensor):
                self._bad[name] = type(output).__name__
                return None
            self._live[name] = output
            self.outputs[name] = output.detach()
            return output.clone()  # the rest of the network may overwrite the copy in place, not ours
        return hook

    def check(self) -> None:
        """Raise if a layer did not run or gave something other than one tensor."""
        for name in self.names:
            if name in self._bad:
                raise CnnlabError(f"layer {name!r} outputs a {self._bad[name]}, not one tensor; pick a layer inside it")
            if name not in self.outputs:
                raise CnnlabError(f"layer {name!r} did not run on this input (an auxiliary head, used only in "
                                  f"training?); pick a layer on the main path")

    def gradients(self, score: torch.Tensor) -> dict[str, torch.Tensor]:
        """d score / d output of each captured layer (no parameter gradients are accumulated)."""
        self.check()
        live = [self._live[n] for n in self.names]
        if not score.requires_grad:
            raise CnnlabError("the class score does not depend on the captured layers through autograd")
        grads = torch.autograd.grad(score, live, allow_unused=True)
        return {n: (torch.zeros_like(t) if g is None else g) for n, t, g in zip(self.names, live, grads)}

    def clear(self) -> None:
        self._live.clear()


@contextmanager
def capture(model: nn.Module, layers: Sequence[str] = ()):
    """Hook ``layers`` of ``model`` for the duration of a ``with`` block; every hook is removed on exit.

    >>> with capture(model, ["features.3"]) as cap:
    ...     logits = model(x)
    ...     grads = cap.gradients(logits[0, 7])   # needs grad mode
    >>> cap.outputs["features.3"].shape
    """
    modules = {name: find_layer(model, name) for name in layers}
    cap = Capture(layers)
    handles = []
    was_training = model.training
    try:
        model.eval()
        for name, module in modules.items():
            handles.append(module.register_forward_hook(cap._hook(name)))
        yield cap
    finally:
        for h in handles:
            h.remove()
        cap.clear()
        model.train(was_training)


def hooks_left(model: nn.Module) -> int:
    """How many hooks of any kind are registered on ``model``'s modules (0 after every cnnlab method)."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return sum(len(getattr(m, k, {}) or {}) for m in model.modules() for k in kinds)
