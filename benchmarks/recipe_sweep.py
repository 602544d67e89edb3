"""Variants of a recipe over several seeds: the final test top-1 of each and the first epoch at a target.

    python benchmarks/recipe_sweep.py lenet5_modern '{"epochs": 4, "lr": 0.05, "ema": 0.99,
        "augment": {"pad_to": 32, "crop_pad": 1}}' --seeds 0-9 [--base lenet5_modern_mnist] [--target 99.0]

The settings (JSON) replace the base recipe's (the model's default when --base is not given); each seed
is a full `cnnlab.train` run in a temporary folder, in this process. Prints, per seed, every epoch's test
top-1, then the finals, how many seeds reached the target and at which epoch. How the MNIST recipes of
docs/benchmarks.md were chosen.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace


def seeds(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def main() -> None:
    from cnnlab.data.memory import Augment
    from cnnlab.train import TrainConfig, train
    from cnnlab.train import recipes as R

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("settings", help="JSON: the recipe fields to change")
    p.add_argument("--base", help="the recipe to start from (default: the model's)")
    p.add_argument("--seeds", default="0-2", help="e.g. 0-9 or 0,3,5")
    p.add_argument("--target", type=float, default=99.0)
    args = p.parse_args()
    changes = json.loads(args.settings)
    base = R.get_recipe(args.base) if args.base else R.recipe_for(args.model)
    if "augment" in changes:
        changes["augment"] = Augment(**changes["augment"])
    recipe = replace(base, name="sweep", models=(), **changes)
    R.RECIPES[recipe.name] = recipe
    finals, first = [], []
    for s in seeds(args.seeds):
        with tempfile.TemporaryDirectory() as out:
            history = train(TrainConfig(args.model, recipe="sweep", out=out, quiet=True, seed=s)).history
        tops = [round(h["eval_top1"], 2) for h in history]
        finals.append(tops[-1])
        first.append(next((h["epoch"] for h in history if h["eval_top1"] >= args.target), None))
        print(f"seed {s}: {tops}  ({history[-1]['images_per_s']:,.0f} img/s)", flush=True)
    print(f"finals {min(finals):.2f}-{max(finals):.2f}; {sum(e is not None for e in first)}/{len(first)} reached "
          f"{args.target}%, first at epochs {first}")


if __name__ == "__main__":
    main()
