"""``python -m alignscope.training RECIPE CONFIG.json``: run one recipe from a JSON config (what
:func:`alignscope.training.launch.launch_command` starts in every process of an ``accelerate launch``)."""

from __future__ import annotations

import json
import sys

from alignscope.training.attack import run_finetune_attack
from alignscope.training.config import FinetuneAttackConfig, TrainResult, config_from_dict
from alignscope.training.recipes import RECIPES, train


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m alignscope.training RECIPE CONFIG.json", file=sys.stderr)
        print(f"recipes: {', '.join(sorted(RECIPES))}, finetune-attack", file=sys.stderr)
        return 2
    recipe, path = args
    with open(path, encoding="utf-8") as f:
        values = json.load(f)
    values.pop("__class__", None)
    result: TrainResult
    if recipe == "finetune-attack":
        result = run_finetune_attack(config_from_dict(FinetuneAttackConfig, values))
    else:
        if recipe not in RECIPES:
            print(f"unknown recipe {recipe!r}; choose from {', '.join(sorted(RECIPES))}", file=sys.stderr)
            return 2
        result = train(recipe, config_from_dict(RECIPES[recipe].config_class, values))
    print(f"trained {result.recipe}: {result.steps} steps, output {result.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
