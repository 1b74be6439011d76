"""`vla-train` console script: the Hydra app (config in vla_train/conf, shipped as package data).

vla-train                                   # embedded default: train + eval on PushT (CPU)
vla-train policy=imf_vanilla train.max_steps=500
vla-train experiment=sweep                  # the 9-run n_emb x n_layer grid (multirun)
vla-train experiment=report report.sweep_dir=outputs/sweep_grid
torchrun --nproc_per_node=2 -m vla_train.cli experiment=smoke   # DDP, same entry point
vla-train experiment=pi05_finetune_tiny     # VLA fine-tuning (vla_train.vla), tiny CPU run
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

log = logging.getLogger("vla_train")

CONFIG_PATH = "conf"
CONFIG_NAME = "config"


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Dispatch on `mode`: train (default) or report."""
    if cfg.mode == "report":
        from vla_train.report import write_report

        sweep = Path(str(cfg.report.sweep_dir))
        out = Path(str(cfg.report.out_dir)) if cfg.report.out_dir else None
        paths = write_report(sweep, out, str(cfg.report.metric))
        print(paths["table"].read_text())
        print(f"heatmap: {paths['heatmap']}")
        return {k: str(v) for k, v in paths.items()}
    if cfg.mode == "vla_finetune":  # experiment=pi05_finetune / pi0_finetune (vla_train.vla)
        from omegaconf import OmegaConf

        from vla_train.vla.from_config import run_vla_finetune

        block = OmegaConf.to_container(cfg.vla, resolve=True)
        assert isinstance(block, dict)
        return run_vla_finetune(
            {str(k): v for k, v in block.items()},
            run_dir,
            seed=int(cfg.seed),
            device=str(cfg.device),
            resume=bool(cfg.resume),
        )
    if cfg.mode != "train":
        raise ValueError(f"mode must be 'train', 'report' or 'vla_finetune', got {cfg.mode!r}")
    from vla_train.trainer import train

    metrics = train(cfg, run_dir)
    if metrics:
        ev, std = metrics["eval"], metrics["eval_standard"]
        lo, hi = ev["success_ci95"]
        print(
            f"\n{metrics['run_name']} on {metrics['task']}: "
            f"success rate {std['success_rate']:.3f} ({round(std['success_rate'] * std['n_episodes'])}"
            f"/{std['n_episodes']}), mean max-coverage {std['mean_max_coverage']:.3f} on seeds "
            f"{std['seeds'][0]}..{std['seeds'][1]}",
            flush=True,
        )
        if ev["n_episodes"] > std["n_episodes"]:
            print(
                f"  all {ev['n_episodes']} seeds {ev['seeds'][0]}..{ev['seeds'][-1]}: success rate "
                f"{ev['success_rate']:.3f} (95% CI {lo:.3f}-{hi:.3f}), mean max-coverage "
                f"{ev['mean_max_coverage']:.3f}, score {ev['mean_score']:.3f}",
                flush=True,
            )
        print(
            f"  {metrics['steps']} steps, data {metrics['data_wall_s']:.0f} s, train "
            f"{metrics['train_wall_s']:.0f} s, eval {metrics['eval_wall_s']:.0f} s, action latency "
            f"{metrics['action_latency_ms_batch1']:.2f} ms | {run_dir}",
            flush=True,
        )
        for n, extra in metrics.get("eval_by_inference_steps", {}).items():
            print(
                f"  same weights, {n} sampling steps: success rate "
                f"{extra['eval/success_rate']:.3f}, mean max-coverage "
                f"{extra['eval/mean_max_coverage']:.3f}, score {extra['eval/mean_score']:.3f}",
                flush=True,
            )
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def _hydra_main(cfg: DictConfig) -> None:
    run(cfg, Path(HydraConfig.get().runtime.output_dir))


def main() -> None:
    """Console entry point; Hydra reads overrides from sys.argv."""
    _hydra_main()


if __name__ == "__main__":
    main()
