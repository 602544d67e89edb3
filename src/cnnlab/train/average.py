"""An exponential moving average of the weights (Polyak averaging), which a recipe asks for with ``ema``.

After every optimiser step the average moves towards the trained weights by ``1 - decay``; early in a run
the decay is ``min(decay, (1 + n) / (10 + n))`` after n updates, so the average is not pulled towards the
random initial weights (TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``). BatchNorm's
running statistics are averaged the same way; integer buffers (``num_batches_tracked``) are copied.

Where a recipe averages, the average is the model: it is what each epoch evaluates, what last.pt and
best.pt hold under ``model`` (so ``cnnlab eval``, the lab and transfer see the network whose accuracy the
run reported), while the trained weights travel in the checkpoint's training state for ``--resume``.
"""

from __future__ import annotations

import copy

import torch


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight average's decay must be between 0 and 1, got {decay}")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._paired: tuple[int, tuple] | None = None
        self._pairs(model)  # the two must match from the start

    def _pairs(self, model: torch.nn.Module):
        if self._paired and self._paired[0] == id(model):
            return self._paired[1]
        mine, theirs = self.model.state_dict(keep_vars=True), model.state_dict(keep_vars=True)
        if mine.keys() != theirs.keys():
            raise ValueError("the weight average was made of another network")
        floats = [(mine[k], theirs[k]) for k in mine if mine[k].is_floating_point()]
        others = [(mine[k], theirs[k]) for k in mine if not mine[k].is_floating_point()]
        self._paired = (id(model), (floats, others))
        return floats, others

    def rate(self) -> float:
        """The decay of the next update."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        floats, others = self._pairs(model)
        d = self.rate()
        torch._foreach_lerp_([a for a, _ in floats], [b.detach() for _, b in floats], 1.0 - d)
        for a, b in others:
            a.copy_(b)
        self.updates += 1

    def state(self) -> dict:
        return {"updates": self.updates, "decay": self.decay}

    def load(self, weights: dict, state: dict) -> None:
        self.model.load_state_dict(weights)
        self.updates = int(state.get("updates", 0))
