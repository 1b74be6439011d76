"""Exponential moving average of the policy weights, evaluated at the end of training.

Decay follows diffusion_policy's `EMAModel` warmup rule: `1 - (1 + step)^-power`, clamped to
[min_decay, max_decay], so early averages track the fast-moving weights and later ones settle.
Buffers (e.g. the fitted normaliser) are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from vla_train.config import EMAConfig


class EMA:
    def __init__(
        self,
        model: nn.Module,
        *,
        power: float = 0.75,
        max_decay: float = 0.9999,
        min_decay: float = 0.0,
        update_after_step: int = 0,
    ) -> None:
        if not 0.0 <= min_decay <= max_decay < 1.0:
            raise ValueError(
                f"EMA needs 0 <= min_decay <= max_decay < 1, got {min_decay}, {max_decay}"
            )
        if power <= 0:
            raise ValueError(f"EMA power must be > 0, got {power}")
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.power = power
        self.max_decay = max_decay
        self.min_decay = min_decay
        self.update_after_step = update_after_step
        self.num_updates = 0

    def decay(self, num_updates: int) -> float:
        step = num_updates - self.update_after_step - 1
        if step <= 0:
            return 0.0
        value = 1.0 - (1.0 + step) ** -self.power
        return max(self.min_decay, min(value, self.max_decay))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of `model` (same architecture) into the average."""
        self.num_updates += 1
        d = self.decay(self.num_updates)
        ema_params = dict(self.model.named_parameters())
        for name, param in model.named_parameters():
            target = ema_params[name]
            if param.requires_grad:
                target.mul_(d).add_(param.detach().to(target.dtype), alpha=1.0 - d)
            else:
                target.copy_(param.detach())
        ema_buffers = dict(self.model.named_buffers())
        for name, buf in model.named_buffers():
            ema_buffers[name].copy_(buf)

    def state_dict(self) -> dict[str, int]:
        return {"num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.num_updates = int(state["num_updates"])


def build_ema(model: nn.Module, config: EMAConfig) -> EMA | None:
    """`train.ema` -> an EMA of `model`, or None when disabled."""
    if not config.enabled:
        return None
    return EMA(
        model,
        power=config.power,
        max_decay=config.max_decay,
        min_decay=config.min_decay,
        update_after_step=config.update_after_step,
    )
