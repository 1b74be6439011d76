"""The recipes the one loop (`vla_train.loop`) trains: `pusht_imf` and `vla_finetune`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vla_train.config import TrainConfig
from vla_train.distributed import DistInfo
from vla_train.recipes import pusht_imf, vla_finetune
from vla_train.recipes.base import Recipe, RunSummary, StepEvent

__all__ = ["RECIPES", "Recipe", "RunSummary", "StepEvent", "format_summary", "make_recipe"]

#: name -> (recipe class, the summary `vla-train` prints after a run)
RECIPES: dict[str, tuple[Callable[[TrainConfig, Path, DistInfo], Recipe], Any]] = {
    "pusht_imf": (pusht_imf.PushTIMF, pusht_imf.format_summary),
    "vla_finetune": (vla_finetune.VLAFinetune, vla_finetune.format_summary),
}


def make_recipe(config: TrainConfig, run_dir: Path, info: DistInfo) -> Recipe:
    if config.recipe not in RECIPES:
        raise ValueError(f"recipe={config.recipe!r}: one of {sorted(RECIPES)}")
    return RECIPES[config.recipe][0](config, run_dir, info)


def format_summary(recipe: str, metrics: Mapping[str, Any], run_dir: Path) -> str:
    return str(RECIPES[recipe][1](metrics, run_dir))
