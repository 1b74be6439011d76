"""Training-noise schedules for the pruner (LightVLA `vla-scripts/finetune.py`, ~L1032).

LightVLA sets `noise_scale = 1 - step / max_steps` before every step: the amplitude of the
uniform noise added to the scores decays linearly from 1 to 0. Its ablations also ran constant
noise and no noise. Call `pruner.set_noise_scale(schedule(step))` each step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ScheduleKind = Literal["linear", "constant", "none"]
_KINDS = ("linear", "constant", "none")


def linear_decay(step: int, total: int, start: float = 1.0, end: float = 0.0) -> float:
    """`start → end` linearly over `total` steps, held at `end` afterwards (never overshoots)."""
    if total <= 0:
        raise ValueError(f"linear_decay: total must be > 0, got {total}")
    frac = min(max(step, 0) / total, 1.0)
    return start + (end - start) * frac


@dataclass(frozen=True)
class NoiseSchedule:
    """Noise amplitude as a function of the training step.

    kind "linear": `start → end` over `max_steps` (LightVLA: 1 → 0 over 40,005 steps);
    "constant": always `start`; "none": None (no noise added, deterministic argmax).
    """

    kind: ScheduleKind = "linear"
    max_steps: int = 40_005
    start: float = 1.0
    end: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"NoiseSchedule.kind must be one of {_KINDS}, got {self.kind!r}")
        if self.max_steps <= 0:
            raise ValueError(f"NoiseSchedule.max_steps must be > 0, got {self.max_steps}")
        if self.start < 0 or self.end < 0:
            raise ValueError(
                f"NoiseSchedule: amplitudes must be >= 0, got start={self.start}, end={self.end}"
            )

    def __call__(self, step: int) -> float | None:
        if self.kind == "none":
            return None
        if self.kind == "constant":
            return self.start
        return linear_decay(step, self.max_steps, self.start, self.end)
