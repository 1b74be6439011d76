"""Scalar loggers behind one two-method interface. TensorBoard is the default; wandb and swanlab
are optional extras imported only when chosen (`mode=offline` needs no network)."""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from vla_train.config import LoggerConfig


class MetricLogger(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class NullLogger:
    def log(self, metrics: dict[str, float], step: int) -> None:
        del metrics, step

    def close(self) -> None:
        pass


class TensorBoardLogger:
    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


def _optional(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"logger.backend={module} needs the optional extra: pip install 'vla-train[{extra}]'"
        ) from e


class WandbLogger:
    def __init__(self, run_dir: Path, project: str, run_name: str, mode: str, config: dict) -> None:
        wandb = _optional("wandb", "wandb")
        self.run = wandb.init(
            project=project, name=run_name, dir=str(run_dir), mode=mode, config=config
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class SwanlabLogger:
    def __init__(self, run_dir: Path, project: str, run_name: str, mode: str, config: dict) -> None:
        swanlab = _optional("swanlab", "swanlab")
        # swanlab calls its network-free mode "local"/"offline" depending on version; pass through.
        self.run = swanlab.init(
            project=project,
            experiment_name=run_name,
            logdir=str(run_dir / "swanlab"),
            mode=mode,
            config=config,
        )
        self._swanlab = swanlab

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._swanlab.log(metrics, step=step)

    def close(self) -> None:
        self._swanlab.finish()


BACKENDS = ("tensorboard", "wandb", "swanlab", "none")


def build_logger(
    backend: str, *, run_dir: Path, project: str, run_name: str, mode: str, config: dict
) -> MetricLogger:
    if backend == "tensorboard":
        return TensorBoardLogger(run_dir / "tensorboard")
    if backend == "wandb":
        return WandbLogger(run_dir, project, run_name, mode, config)
    if backend == "swanlab":
        return SwanlabLogger(run_dir, project, run_name, mode, config)
    if backend == "none":
        return NullLogger()
    raise ValueError(f"logger.backend must be one of {BACKENDS}, got {backend!r}")


def logger_from_config(
    config: LoggerConfig, run_dir: Path, run_name: str, run_config: Mapping[str, Any]
) -> MetricLogger:
    """`logger.*` -> the logger of one run (rank 0 only; the others use NullLogger)."""
    return build_logger(
        config.backend,
        run_dir=run_dir,
        project=config.project,
        run_name=run_name,
        mode=config.mode,
        config=dict(run_config),
    )


class RunLog:
    """Rank 0's record of a run: every logged scalar goes to the logger backend and, as one JSON
    line `{"step": ..., **metrics}`, to `<run_dir>/train_log.jsonl` (appended across resumes) until
    `close_curve`. On other ranks both are no-ops."""

    def __init__(self, logger: MetricLogger, curve: Path | None) -> None:
        self.logger = logger
        self._main = curve is not None
        self._curve = curve.open("a") if curve is not None else None

    @classmethod
    def open(
        cls,
        config: LoggerConfig,
        run_dir: Path,
        run_name: str,
        run_config: Mapping[str, Any],
        *,
        is_main: bool,
        curve_file: str,
    ) -> RunLog:
        if not is_main:
            return cls(NullLogger(), None)
        return cls(logger_from_config(config, run_dir, run_name, run_config), run_dir / curve_file)

    def record(self, metrics: Mapping[str, float], step: int) -> None:
        if self._main:
            self.logger.log(dict(metrics), step)
        if self._curve is not None:
            self._curve.write(json.dumps({"step": step, **metrics}) + "\n")
            self._curve.flush()

    def close_curve(self) -> None:
        if self._curve is not None:
            self._curve.close()
            self._curve = None
