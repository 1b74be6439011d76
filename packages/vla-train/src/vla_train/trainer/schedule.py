"""Learning-rate schedule: linear warmup then cosine decay (diffusion_policy / nanoGPT style)."""

from __future__ import annotations

import math

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


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, max_steps: int, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    # Validate eagerly so a bad config fails before the first step.
    cosine_with_warmup(0, warmup_steps=warmup_steps, max_steps=max_steps, min_ratio=min_ratio)

    def factor(step: int) -> float:
        return cosine_with_warmup(
            step, warmup_steps=warmup_steps, max_steps=max_steps, min_ratio=min_ratio
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
