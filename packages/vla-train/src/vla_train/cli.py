"""`vla-train` console script: the Hydra app (config in vla_train/conf, shipped as package data).
Hydra composes; `to_train_config` is the one place the DictConfig becomes the frozen
`TrainConfig` (vla_train.config); nothing downstream imports omegaconf.

vla-train                                   # recipe pusht_imf, the embedded PushT default (CPU)
vla-train policy=imf_vanilla train.max_steps=500
vla-train experiment=sweep                  # the 9-run n_emb x n_layer grid (multirun)
vla-train experiment=report report.sweep_dir=outputs/sweep_grid
torchrun --nproc_per_node=2 -m vla_train.cli experiment=smoke   # DDP, same entry point
vla-train experiment=pi05_finetune_tiny     # recipe vla_finetune, tiny CPU run
vla-train --help                            # recipes and their main knobs
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from vla_train.config import APP_KEYS, TrainConfig, check_overrides, from_dict

log = logging.getLogger("vla_train")

CONFIG_MODULE = "vla_train.conf"
CONFIG_PATH = "conf"
CONFIG_NAME = "config"


def compose_config(overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """The app config exactly as `vla-train <overrides>` would see it (Hydra compose API)."""
    from hydra import compose, initialize_config_module

    check_overrides(overrides)
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """The Hydra boundary: resolve, drop the app-only keys, build the frozen TrainConfig."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    return from_dict({str(k): v for k, v in plain.items() if k not in APP_KEYS})


def load_config(overrides: Sequence[str] = ()) -> TrainConfig:
    """`TrainConfig` of `vla-train <overrides>` (for tests, benchmarks and notebooks)."""
    cfg = compose_config(overrides)
    if cfg.get("mode") == "vla_finetune":
        from_dict({"mode": "vla_finetune"})  # raises naming the new key
    return to_train_config(cfg)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Dispatch on `mode`: train (default; the recipe is `recipe`) or report."""
    if cfg.mode == "report":
        from vla_train.report import write_report

        sweep = Path(str(cfg.report.sweep_dir))
        out = Path(str(cfg.report.out_dir)) if cfg.report.out_dir else None
        paths = write_report(sweep, out, str(cfg.report.metric))
        print(paths["table"].read_text())
        print(f"heatmap: {paths['heatmap']}")
        return {k: str(v) for k, v in paths.items()}
    if cfg.mode == "vla_finetune":
        raise ValueError("mode=vla_finetune was renamed: use recipe=vla_finetune")
    if cfg.mode != "train":
        raise ValueError(f"mode must be 'train' or 'report', got {cfg.mode!r}")
    from vla_train.loop import train
    from vla_train.recipes import format_summary

    config = to_train_config(cfg)
    metrics = train(config, run_dir)
    if metrics:
        print(format_summary(config.recipe, metrics, run_dir), flush=True)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def _hydra_main(cfg: DictConfig) -> None:
    run(cfg, Path(HydraConfig.get().runtime.output_dir))


def main() -> None:
    """Console entry point; Hydra reads overrides from sys.argv."""
    check_overrides([a for a in sys.argv[1:] if not a.startswith("-")])
    _hydra_main()


if __name__ == "__main__":
    main()
