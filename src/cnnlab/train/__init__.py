"""Training: recipes, the trainer, checkpoints, evaluation."""

from cnnlab.train.recipes import RECIPES, Recipe, get_recipe, list_recipes, recipe_for
from cnnlab.train.trainer import RunResult, TrainConfig, train

__all__ = ["RECIPES", "Recipe", "get_recipe", "list_recipes", "recipe_for", "RunResult", "TrainConfig", "train"]
