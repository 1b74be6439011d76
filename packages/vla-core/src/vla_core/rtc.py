"""Real-time chunking (RTC): inpaint a new action chunk onto the unexecuted rest of the previous one.

Black, Galliker, Levine, "Real-Time Execution of Action Chunking Flow Policies" (arXiv 2506.07339,
2025), Algorithm 1: at every denoising step the velocity gets a ΠGDM-style correction that pulls the
one-step data estimate `Â` towards the previous chunk `Y` on a soft-masked prefix. Pure sampling
time: any flow-matching velocity function can be guided, nothing is retrained.

Time conventions. Ours (openpi / lerobot, ARCHITECTURE.md): t = 1 is noise, t = 0 is data,
`x_t = t·ε + (1−t)·x`, velocity `u = ε − x`, Euler step `x ← x − Δ·u`. The paper: τ = 0 is noise,
τ = 1 is data, `A^τ = τ·A + (1−τ)·ε`, velocity `v = A − ε`. So τ = 1 − t and v = −u, and
- data estimate: paper `Â = A^τ + (1−τ)·v`  ==  ours `x̂ = x_t − t·u`;
- guided velocity: paper `v + w·Jᵀ diag(W) (Y − Â)`  ==  ours `u − w·Jᵀ diag(W) (Y − x̂)`,
  with `J = ∂x̂/∂x_t` (a vector-Jacobian product, one backward pass through the velocity model);
- weight: paper `w = min(β, (1−τ) / (τ·r_τ²))`, `r_τ² = (1−τ)² / (τ² + (1−τ)²)`, evaluated at τ = 1 − t.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

PrefixSchedule = Literal["zeros", "ones", "linear", "exp"]
PREFIX_SCHEDULES: tuple[str, ...] = get_args(PrefixSchedule)


@dataclass(frozen=True)
class RTCConfig:
    """How hard a new chunk is pulled towards the previous one.

    `prefix_schedule`: guidance weights over the chunk (see `prefix_weights`): "zeros" guides only
    the d frozen actions, "ones" the whole overlap, "linear" / "exp" decay over the overlap (the
    paper uses "exp"). `max_guidance_weight`: β, the clip on the ΠGDM weight (the paper's β)."""

    prefix_schedule: PrefixSchedule = "exp"
    max_guidance_weight: float = 5.0

    def __post_init__(self) -> None:
        if self.prefix_schedule not in PREFIX_SCHEDULES:
            raise ValueError(
                f"prefix_schedule must be one of {PREFIX_SCHEDULES}, got {self.prefix_schedule!r}"
            )
        if not (self.max_guidance_weight >= 0 and math.isfinite(self.max_guidance_weight)):
            raise ValueError(
                f"max_guidance_weight must be finite and >= 0, got {self.max_guidance_weight}"
            )


def paper_time(t: float) -> float:
    """Our flow time t (1 = noise) -> the paper's τ (0 = noise)."""
    return 1.0 - t


def flow_time(tau: float) -> float:
    """The paper's τ (0 = noise) -> our flow time t (1 = noise)."""
    return 1.0 - tau


def prefix_weights(
    inference_delay: int, execution_horizon: int, horizon: int, schedule: PrefixSchedule
) -> Tensor:
    """Guidance mask `W [horizon]` (paper eq. 5, with d = delay, s = execution horizon, H = horizon).

    `W_i = 1` for i < d (actions executed while inference runs: frozen); for d ≤ i < H − s the
    overlap with the previous chunk decays with `c_i = (H − s − i) / (H − s − d + 1)` ("linear":
    c_i, "exp": c_i·(e^{c_i} − 1)/(e − 1)); `W_i = 0` for i ≥ H − s (beyond the previous chunk)."""
    if schedule not in PREFIX_SCHEDULES:
        raise ValueError(f"schedule must be one of {PREFIX_SCHEDULES}, got {schedule!r}")
    overlap_end = horizon - execution_horizon
    if not 0 <= inference_delay <= overlap_end <= horizon:
        raise ValueError(
            f"need 0 <= inference_delay ({inference_delay}) <= horizon - execution_horizon "
            f"({horizon} - {execution_horizon}) <= horizon"
        )
    index = torch.arange(horizon, dtype=torch.float64)
    c = (overlap_end - index) / (overlap_end - inference_delay + 1)
    if schedule == "zeros":
        middle = torch.zeros_like(c)
    elif schedule == "ones":
        middle = torch.ones_like(c)
    elif schedule == "linear":
        middle = c
    else:
        middle = c * torch.expm1(c) / (math.e - 1)
    weights = torch.where(index < inference_delay, torch.ones_like(c), middle)
    weights = torch.where(index >= overlap_end, torch.zeros_like(c), weights)
    return weights.float()


def guidance_weight(t: float, max_guidance_weight: float) -> float:
    """`min(β, (1−τ)/(τ·r_τ²))` at τ = 1 − t; the unclipped weight is infinite at both ends."""
    tau = paper_time(t)
    if tau <= 0.0 or tau >= 1.0:
        return max_guidance_weight
    r_squared = (1 - tau) ** 2 / (tau**2 + (1 - tau) ** 2)
    return min(max_guidance_weight, (1 - tau) / (tau * r_squared))


@dataclass(frozen=True)
class RTCGuidance:
    """One sampling call's inpainting target.

    `target [B, H, A]`: the previous chunk's actions re-indexed so that `target[:, i]` is meant for
    the same control step as the new chunk's action i (zeros where the previous chunk has none),
    in the space the sampler denoises in (normalised actions). `weights [H]`: `prefix_weights`."""

    target: Tensor
    weights: Tensor
    max_guidance_weight: float

    def __post_init__(self) -> None:
        if self.target.dim() != 3:
            raise ValueError(f"target must be [B, H, A], got {tuple(self.target.shape)}")
        if tuple(self.weights.shape) != (self.target.shape[1],):
            raise ValueError(
                f"weights must be [{self.target.shape[1]}] (the target's horizon), got "
                f"{tuple(self.weights.shape)}"
            )
        if not bool(torch.isfinite(self.target).all()):
            raise ValueError("target holds NaN or inf")

    @classmethod
    def from_previous_chunk(
        cls,
        previous: Tensor,
        *,
        inference_delay: int,
        execution_horizon: int,
        horizon: int,
        config: RTCConfig,
    ) -> RTCGuidance:
        """`previous [B, K, A]`: the unexecuted rest of the last chunk, `previous[:, 0]` due at the
        new chunk's first step; K >= horizon − execution_horizon (longer is cut, the tail of the
        new chunk has no target)."""
        if previous.dim() != 3:
            raise ValueError(f"previous chunk must be [B, K, A], got {tuple(previous.shape)}")
        weights = prefix_weights(
            inference_delay, execution_horizon, horizon, config.prefix_schedule
        ).to(previous.device)
        overlap_end = horizon - execution_horizon
        if previous.shape[1] < overlap_end:
            raise ValueError(
                f"previous chunk has {previous.shape[1]} actions, guidance needs "
                f"horizon - execution_horizon = {overlap_end}"
            )
        batch, _, action_dim = previous.shape
        target = previous.new_zeros((batch, horizon, action_dim))
        keep = min(horizon, previous.shape[1])
        target[:, :keep] = previous[:, :keep]
        return cls(target, weights, config.max_guidance_weight)


VelocityFn = Callable[[Tensor], Tensor]  # x_t [B, H, A] -> u [B, H, A] at a fixed time


def guided_velocity(
    velocity_fn: VelocityFn, x_t: Tensor, t: float, guidance: RTCGuidance
) -> Tensor:
    """The RTC-corrected velocity `u − w(t)·Jᵀ diag(W)(Y − x̂)` at flow time t (see module doc).

    Runs one forward with autograd on and one backward through `velocity_fn`, so it cannot run
    under `torch.inference_mode()` (plain `no_grad` is fine: grad is re-enabled here).
    The data estimate is `x̂ = x_t − t·u`, exact for an instantaneous-velocity model."""
    if tuple(guidance.target.shape) != tuple(x_t.shape):
        raise ValueError(
            f"RTC target {tuple(guidance.target.shape)} does not match the sample "
            f"{tuple(x_t.shape)}"
        )
    weight = guidance_weight(t, guidance.max_guidance_weight)
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        velocity = velocity_fn(x)
        estimate = x - t * velocity
        target = guidance.target.to(estimate.dtype)
        mask = guidance.weights.to(estimate.device, estimate.dtype)[None, :, None]
        residual = (target - estimate.detach()) * mask
        (pullback,) = torch.autograd.grad(estimate, x, grad_outputs=residual)
    return velocity.detach() - weight * pullback
