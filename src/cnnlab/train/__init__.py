"""Training: recipes, the trainer, checkpoints, evaluation.

The package is itself callable, so a notebook writes what it means: ``cnnlab.train("lenet5", epochs=2)`` is
:func:`cnnlab.train.train` (``cnnlab.train.train(TrainConfig(...))`` works too).
"""

import sys
import types

from cnnlab.train.recipes import RECIPES, Recipe, get_recipe, list_recipes, recipe_for
from cnnlab.train.config import RunResult, TrainConfig
from cnnlab.train.trainer import train

__all__ = ["RECIPES", "Recipe", "get_recipe", "list_recipes", "recipe_for", "RunResult", "TrainConfig", "train"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs) -> RunResult:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
