"""Flow-matching time arithmetic: the Euler time grid and the sine-cosine time embedding.

Two ways to compute the same math (`TimeArithmetic`):
- `"openpi"` reproduces openpi's float32 arithmetic bit for bit (`pi0.py::sample_actions` /
  `posemb_sincos`, JAX and its PyTorch port): the time is accumulated as `t += dt` in float32 and
  the embedding's frequency table and angles are rounded to float32 at each step of openpi's
  formula. Models converted from openpi checkpoints were trained with this arithmetic.
- `"exact"` uses the exact grid `t_k = 1 − k/N` and a float64 embedding rounded once to float32.
At t = 1 the highest frequency turns ~1571 rad, where one float32 ulp of the angle is 1.2e-4, so
the two differ by ~1e-4 in the embedding and ~1e-4 in velocities of magnitude ~3.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

__all__ = ["TIME_ARITHMETICS", "TimeArithmetic", "euler_time_grid", "posemb_sincos"]

TimeArithmetic = Literal["openpi", "exact"]
TIME_ARITHMETICS: tuple[str, ...] = get_args(TimeArithmetic)


def check_time_arithmetic(arithmetic: str) -> None:
    if arithmetic not in TIME_ARITHMETICS:
        raise ValueError(f"time_arithmetic must be one of {TIME_ARITHMETICS}, got {arithmetic!r}")


def euler_time_grid(num_steps: int, arithmetic: TimeArithmetic = "openpi") -> list[float]:
    """The times at which `sample_actions` evaluates the velocity, from t = 1 towards 0.

    openpi: `t = 1; while t >= -dt/2: ...; t += dt` with `dt = -1/num_steps`, all in float32 (the
    loop condition decides the step count, which is `num_steps` for every practical value).
    exact: `t_k = 1 + k·dt` in float64, k = 0 … num_steps − 1.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    check_time_arithmetic(arithmetic)
    dt = -1.0 / num_steps
    if arithmetic == "exact":
        return [1.0 + k * dt for k in range(num_steps)]
    dt32, stop32 = np.float32(dt), np.float32(-dt / 2)
    times: list[float] = []
    t = np.float32(1.0)
    while t >= stop32:
        times.append(float(t))
        t = np.float32(t + dt32)
    return times


def _openpi_frequencies(half: int, min_period: float, max_period: float) -> Tensor:
    """`1/period·2·π` rounded to float32 op by op as jnp does it: `linspace(0, 1, half)` =
    `f32(1/(half−1))·i` (last entry exactly 1), `period = f32(min)·f32(ratio)**fraction` (XLA's
    float32 pow is correctly rounded on these inputs), then `(1/period)·2·π`."""
    if half > 1:
        index = np.arange(half, dtype=np.float32)
        fraction = np.float32(1.0 / (half - 1)) * index
        fraction[-1] = np.float32(1.0)
    else:
        fraction = np.zeros(half, dtype=np.float32)
    ratio = np.float32(max_period / min_period)
    power = np.power(np.float64(ratio), fraction.astype(np.float64)).astype(np.float32)
    period = np.float32(min_period) * power
    frequency = (np.float32(1.0) / period) * np.float32(2.0) * np.float32(math.pi)
    return torch.from_numpy(np.ascontiguousarray(frequency, dtype=np.float32))


def posemb_sincos(
    time: Tensor,
    dim: int,
    min_period: float,
    max_period: float,
    arithmetic: TimeArithmetic = "openpi",
) -> Tensor:
    """openpi sine-cosine time embedding: time [B] or [B, H] -> [..., dim] fp32 (`sin ‖ cos`)."""
    if dim % 2:
        raise ValueError(f"time embedding width must be even, got {dim}")
    check_time_arithmetic(arithmetic)
    if arithmetic == "openpi":
        frequency = _openpi_frequencies(dim // 2, min_period, max_period).to(time.device)
        angle = time.to(torch.float32)[..., None] * frequency
        return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)
    high = torch.float64 if time.device.type not in ("mps",) else torch.float32
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=high, device=time.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = time.to(high)[..., None] * (2.0 * math.pi) / period
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1).to(torch.float32)
