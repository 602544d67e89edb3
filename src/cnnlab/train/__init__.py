"""Training: recipes, the trainer, checkpoints, evaluation."""

from cnnlab.train.recipes import RECIPES, Recipe, get_recipe, list_recipes, recipe_for
from cnnlab.train.config import RunResult, TrainConfig
from cnnlab.train.trainer import train

__all__ = ["RECIPES", "Recipe", "get_recipe", "list_recipes", "recipe_for", "RunResult", "TrainConfig", "train"]
