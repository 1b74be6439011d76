"""The one learning-rate schedule: linear warmup `(step + 1) / warmup_steps`, then a half cosine
from the peak to `min_ratio · peak` at `max_steps` (diffusion_policy / nanoGPT style).

Issue #19 kept PushT's warmup `(s+1)/W` (its default's numbers stay bit-identical); VLA
fine-tuning used `(s+1)/(W+1)` before, so its first `W` learning rates are now a little higher.
The learning rate is a pure function of the step: nothing to checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def cosine_with_warmup(step: int, *, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """Multiplier on the base learning rate at optimizer step `step` (0-based)."""
    if warmup_steps < 0 or max_steps <= 0 or not 0.0 <= min_ratio <= 1.0:
        raise ValueError(
            f"schedule needs warmup_steps >= 0, max_steps > 0, 0 <= min_ratio <= 1; got "
            f"{warmup_steps=}, {max_steps=}, {min_ratio=}"
        )
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(
    optimizer: torch.optim.Optimizer, base_lrs: Sequence[float], factor: float
) -> list[float]:
    """Set every param group's lr to `base · factor` (the product LambdaLR would form)."""
    lrs = [base * factor for base in base_lrs]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    return lrs
