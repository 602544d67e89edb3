"""The learning rate of every step: the recipe's schedule (constant, steps, exp, cosine, one-cycle, with
warm-up), for "plateau" the division when the evaluation accuracy stops improving, and the changes a user made
while the run trained (:meth:`Schedule.change`: from a step on, the schedule times a factor). One object owns
it all, including the plateau's state and the changes, which checkpoints carry so that a resumed run goes on
exactly."""

from __future__ import annotations

from dataclasses import dataclass, field

from cnnlab.train.recipes import Recipe


@dataclass
class Schedule:
    recipe: Recipe
    steps_per_epoch: int
    plateau: dict = field(default_factory=lambda: {"factor": 1.0, "best": -1.0, "bad": 0})
    # learning-rate changes made on the fly, in order: {"step", "factor", "id"}; from optimiser step ``step``
    # (0-based) on, the scheduled rate is multiplied by the latest change's ``factor`` (they do not compound)
    changes: list[dict] = field(default_factory=list)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.recipe.epochs

    def lr(self, step: int) -> float:
        """The learning rate of optimiser step ``step`` (0-based)."""
        return self.scheduled(step) * self.factor(step)

    def scheduled(self, step: int) -> float:
        """The recipe's rate at ``step`` (plateau divisions included), before any change made on the fly."""
        r = self.recipe
        return r.lr * r.lr_factor(step, self.steps_per_epoch, self.total_steps) * self.plateau["factor"]

    def factor(self, step: int) -> float:
        """The factor of the latest change made at or before ``step`` (1 without one)."""
        factor = 1.0
        for c in self.changes:
            if c["step"] <= step:
                factor = c["factor"]
        return factor

    def change(self, step: int, value: float, id: int) -> dict:
        """Set the rate to ``value`` from ``step`` on, keeping the schedule's shape: later steps get the
        scheduled rate times ``value`` / the scheduled rate now. Returns the change as recorded."""
        record = {"step": step, "factor": value / self.scheduled(step), "id": id}
        self.changes.append(record)
        return record

    def end_epoch(self, top1: float) -> None:
        """"plateau": after ``patience`` epochs without a better evaluation top-1, multiply by ``gamma``."""
        if self.recipe.schedule != "plateau":
            return
        p = self.plateau
        if top1 > p["best"]:
            p["best"], p["bad"] = top1, 0
        else:
            p["bad"] += 1
            if p["bad"] >= self.recipe.patience:
                p["factor"] *= self.recipe.gamma
                p["bad"] = 0

    def state_dict(self) -> dict:
        return {"plateau": dict(self.plateau), "lr_changes": [dict(c) for c in self.changes]}

    def load_state_dict(self, state: dict) -> None:
        if state and state.get("plateau"):
            self.plateau = dict(state["plateau"])
        if state and state.get("lr_changes"):
            self.changes = [dict(c) for c in state["lr_changes"]]

    def stretched(self, trained: dict, step: int) -> str:
        """A sentence when a resumed run has other epochs than it was trained with (``trained``: its recipe's
        settings) and the schedule is laid over the whole run (cosine, one-cycle): the learning rate at the
        next step then differs from the one the run had reached."""
        r, old_epochs = self.recipe, trained.get("epochs", self.recipe.epochs)
        if old_epochs == r.epochs or r.schedule not in ("cosine", "onecycle"):
            return ""
        before = r.lr * r.lr_factor(step, self.steps_per_epoch, self.steps_per_epoch * old_epochs)
        after = self.lr(step)
        return (f"`epochs` {r.epochs} (the run had {old_epochs}) lays the {r.schedule} schedule over "
                f"{r.epochs} epochs, so the learning rate at step {step + 1} is {after:.3g} instead of "
                f"{before:.3g}: this continues the run as a new, longer schedule, not where it stopped")
