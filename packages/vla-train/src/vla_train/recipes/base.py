"""What a recipe gives the one training loop (`vla_train.loop`): the model and its loss, the
optimizer's parameter groups, the batch of each step, what happens between steps (periodic
evaluation, expert-in-the-loop rounds) and the final evaluation / export. The loop owns
everything else: devices and process groups, `parallelize`, the schedule, EMA, clipping, AMP,
checkpoints, logging."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

__all__ = ["Recipe", "RunSummary", "StepEvent"]


@dataclass(frozen=True)
class StepEvent:
    """Returned by `Recipe.between_steps`: scalars to log at this step, and whether the loop
    must checkpoint now (the recipe's position changed, e.g. a DAgger round grew the data)."""

    metrics: Mapping[str, float] = field(default_factory=dict)
    checkpoint: bool = False


@dataclass(frozen=True)
class RunSummary:
    """What the loop knows at the end, handed to `Recipe.finish`."""

    step: int  # optimizer steps done in total
    start_step: int  # where this process started (0, or the resumed checkpoint's step)
    data_wall_s: float
    train_wall_s: float  # across every resumed segment of the run
    segment_train_wall_s: float  # this process only
    losses: list[float]  # the logged (all-reduced) losses of this segment
    ema_model: nn.Module | None
    log: Callable[[Mapping[str, float]], None]  # record final scalars at the last step


class Recipe(Protocol):
    #: Module classes that are the units of activation checkpointing and FSDP2 sharding.
    blocks: tuple[type[nn.Module], ...]

    def build_model(self) -> nn.Module:
        """The trained model on the run's device, weights seeded identically on every rank."""
        ...

    def loss_module(self, model: nn.Module) -> nn.Module:
        """Wraps `model`: forward(batch) -> scalar loss (what DDP and torch.compile see)."""
        ...

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer: ...

    def checkpoint_config(self) -> dict[str, Any]:
        """The JSON stored as config.json in every checkpoint."""
        ...

    def start(self, state: Mapping[str, Any] | None) -> None:
        """Set up the data at the resumed position (`state_dict()` of the checkpoint) or at 0."""
        ...

    def next_batch(self, step: int) -> tuple[Any, dict[str, float]]:
        """The batch of optimizer step `step` (0-based) on the device, plus scalars to log."""
        ...

    def between_steps(self, step: int, eval_model: nn.Module) -> StepEvent | None:
        """After `step` optimizer steps (and their checkpoint), before the next batch."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def finish(self, model: nn.Module, run: RunSummary) -> dict[str, Any]:
        """Every rank calls it; rank 0's result is written to metrics.json."""
        ...

    def close(self) -> None: ...
