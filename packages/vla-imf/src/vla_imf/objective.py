"""The improved-MeanFlow objective, the flow-matching baseline and their samplers.

Time convention (ARCHITECTURE.md): `z_t = (1−t)·x + t·ε`, t=1 noise, velocity target `ε − x`.
iMF (arXiv 2512.02012) regresses `V = u_θ(z,r,t) + (t−r)·sg(du/dt)` onto `ε − x`, where
`du/dt = ∂_z u·v̂ + ∂_t u` is one forward-mode JVP with tangents `(v̂, 0, 1)` on `(z, r, t)`
and `v̂` is the model's own velocity (boundary `u(z,t,t)` or an auxiliary v-head).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from vla_core.rtc import RTCGuidance, guided_velocity
from vla_imf.config import ObjectiveConfig

# u(z [B,...], r [B], t [B]) -> [B,...]; the observation condition is closed over.
AverageVelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]
# v(z [B,...], t [B]) -> [B,...]
VelocityFn = Callable[[Tensor, Tensor], Tensor]


class ForwardADUnsupportedError(RuntimeError):
    """A backbone op has no forward-mode-AD formula, so the iMF JVP cannot run through it."""


@dataclass
class LossOutput:
    """`loss` is the scalar to backpropagate (includes `aux_loss` when a v-head is trained)."""

    loss: Tensor
    per_sample: Tensor  # [B], before the batch mean (after adaptive weighting)
    prediction: Tensor  # V for iMF, u(z,t,t) for flow matching
    target: Tensor  # ε − x
    r: Tensor
    t: Tensor
    aux_loss: Tensor | None = None


def _per_row(time: Tensor, like: Tensor) -> Tensor:
    """`[B]` -> `[B, 1, …]` broadcastable against `like`."""
    return time.reshape(-1, *([1] * (like.dim() - 1)))


def sample_logit_normal(
    batch: int,
    p_mean: float,
    p_std: float,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> Tensor:
    """`sigmoid(N(p_mean, p_std²))`, shape `[batch]`."""
    normal = torch.randn(batch, device=device, dtype=dtype, generator=generator)
    return torch.sigmoid(p_mean + p_std * normal)


def sample_time_pairs(
    batch: int,
    config: ObjectiveConfig,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """(r, t): two i.i.d. logit-normal draws ordered so t ≥ r; the first ⌊fraction·B⌋ rows r = t."""
    a = sample_logit_normal(
        batch, config.p_mean, config.p_std, device=device, dtype=dtype, generator=generator
    )
    b = sample_logit_normal(
        batch, config.p_mean, config.p_std, device=device, dtype=dtype, generator=generator
    )
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    n_boundary = math.floor(config.boundary_fraction * batch)
    r = torch.cat([t[:n_boundary], r[n_boundary:]])
    return r, t


def _is_forward_ad_error(error: BaseException) -> bool:
    text = str(error).lower()
    return "forward ad" in text or "forward-mode" in text or "forward mode" in text or "jvp" in text


def jvp_du_dt(
    u_fn: AverageVelocityFn, z: Tensor, r: Tensor, t: Tensor, tangent: Tensor
) -> tuple[Tensor, Tensor]:
    """`(u, du/dt)` from one `torch.func.jvp` with tangents `(tangent, 0, 1)` on `(z, r, t)`.

    Runs with the math SDPA backend (fused kernels have no forward-AD) and autocast off. The
    primal `u` keeps its autograd graph to the parameters. Raises `ForwardADUnsupportedError`
    naming the failing op when the backbone is not forward-AD-safe.
    """
    if tangent.shape != z.shape:
        raise ValueError(f"tangent {tuple(tangent.shape)} must match z {tuple(z.shape)}")
    # The tangent may come from a forward under autocast (bf16); the JVP runs in z's dtype.
    tangents = (tangent.to(z.dtype), torch.zeros_like(r), torch.ones_like(t))
    with sdpa_kernel(SDPBackend.MATH), torch.autocast(device_type=z.device.type, enabled=False):
        try:
            u, du_dt = torch.func.jvp(u_fn, (z, r, t), tangents)[:2]
        except (NotImplementedError, RuntimeError) as error:
            if isinstance(error, ForwardADUnsupportedError) or not _is_forward_ad_error(error):
                raise
            raise ForwardADUnsupportedError(
                "the iMF objective needs forward-mode AD through the backbone, but an op has "
                f"no forward-AD formula: {error}"
            ) from error
    return u, du_dt


def imf_compound_velocity(
    u_fn: AverageVelocityFn,
    z: Tensor,
    r: Tensor,
    t: Tensor,
    tangent: Tensor,
    *,
    differentiate_jvp_primal: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """`(u, du/dt, V)` with `V = u + (t − r)·sg(du/dt)`.

    `differentiate_jvp_primal=False` runs the JVP without autograd and takes `u` from a separate
    ordinary forward: one more forward, but compatible with activation checkpointing (whose
    recomputation cannot replay forward-AD dual tensors).
    """
    if differentiate_jvp_primal:
        u, du_dt = jvp_du_dt(u_fn, z, r, t, tangent)
    else:
        with torch.no_grad():
            _, du_dt = jvp_du_dt(u_fn, z, r, t, tangent)
        u = u_fn(z, r, t)
    du_dt = du_dt.detach()
    return u, du_dt, u + _per_row(t - r, u) * du_dt


def regression_loss(
    prediction: Tensor,
    target: Tensor,
    config: ObjectiveConfig,
    valid_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-sample `L = Σ ‖pred − target‖²` over valid rows, adaptive `L / sg(L + c)^p`, batch mean.

    `valid_mask` is `[B, T]` bool (True = a real, non-padded action) for `[B, T, Da]` tensors.
    Returns `(loss, per_sample [B])`.
    """
    squared = (prediction - target).pow(2)
    if valid_mask is not None:
        if valid_mask.shape != squared.shape[:2] or valid_mask.dtype != torch.bool:
            raise ValueError(
                f"valid_mask must be bool {tuple(squared.shape[:2])}, got "
                f"{valid_mask.dtype} {tuple(valid_mask.shape)}"
            )
        squared = squared * valid_mask.reshape(*valid_mask.shape, *([1] * (squared.dim() - 2)))
    per_sample = squared.flatten(1).sum(1)
    if config.adaptive_p > 0:
        per_sample = per_sample / (per_sample.detach() + config.adaptive_c).pow(config.adaptive_p)
    return per_sample.mean(), per_sample


def _noise_and_check(x: Tensor, noise: Tensor | None, generator: torch.Generator | None) -> Tensor:
    if noise is None:
        return torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    if noise.shape != x.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must match x {tuple(x.shape)}")
    return noise


def imf_loss(
    u_fn: AverageVelocityFn,
    x: Tensor,
    config: ObjectiveConfig,
    *,
    noise: Tensor | None = None,
    r: Tensor | None = None,
    t: Tensor | None = None,
    valid_mask: Tensor | None = None,
    velocity_fn: VelocityFn | None = None,
    differentiate_jvp_primal: bool = True,
    generator: torch.Generator | None = None,
    u_rows: Callable[[slice], AverageVelocityFn] | None = None,
) -> LossOutput:
    """The iMF loss on clean data `x [B, …]` (see module docstring).

    The tangent `v̂` is the boundary condition `u(z, t, t)` under no_grad, or `velocity_fn(z, t)`
    (an auxiliary v-head, trained with its own flow-matching loss that is added to `loss`).
    `noise`, `r`, `t` may be given (tests, paired comparisons); otherwise they are sampled.

    `u_rows(rows)` is `u_fn` for a slice of the batch (its condition sliced the same way). When
    given, the leading boundary rows (`r = t`, where `V = u` because `t − r = 0`) are a plain
    forward and only the other rows pay for the tangent forward and the JVP: the same loss for
    ≈ 30 % less compute at `boundary_fraction = 0.5`.
    """
    noise = _noise_and_check(x, noise, generator)
    if (r is None) != (t is None):
        raise ValueError("give both r and t, or neither")
    if r is None or t is None:
        r, t = sample_time_pairs(
            x.shape[0], config, device=x.device, dtype=x.dtype, generator=generator
        )
        n_boundary = math.floor(config.boundary_fraction * x.shape[0])  # static: compiles
    else:
        n_boundary = int((r == t).int().cumprod(0).sum())  # the leading run of r = t rows
    if bool((t < r).any()):
        raise ValueError("iMF needs t >= r on every row")
    z = (1 - _per_row(t, x)) * x + _per_row(t, x) * noise
    target = noise - x
    aux_loss = None
    velocity = None
    if velocity_fn is not None:
        velocity = velocity_fn(z, t)
        aux_loss, _ = regression_loss(velocity, target, config, valid_mask)
    if u_rows is None or n_boundary == 0:
        n_boundary, jvp_fn = 0, u_fn
    else:
        jvp_fn = u_rows(slice(n_boundary, None))
    # Fresh tensors, not views with an offset: compiled forward-AD rejects a dual whose primal is
    # a view and whose tangent is not.
    z_j, r_j, t_j = (v[n_boundary:].clone() if n_boundary else v for v in (z, r, t))
    if velocity is None:
        with torch.no_grad():
            tangent = jvp_fn(z_j, t_j, t_j)
    else:
        tangent = velocity.detach()[n_boundary:]
    _, _, compound = imf_compound_velocity(
        jvp_fn, z_j, r_j, t_j, tangent, differentiate_jvp_primal=differentiate_jvp_primal
    )
    if n_boundary:
        head = slice(0, n_boundary)
        boundary = u_rows(head)(z[head], t[head], t[head])  # type: ignore[misc]
        compound = torch.cat([boundary, compound])
    loss, per_sample = regression_loss(compound, target, config, valid_mask)
    if aux_loss is not None:
        loss = loss + aux_loss
    return LossOutput(loss, per_sample, compound, target, r, t, aux_loss)


def flow_matching_loss(
    u_fn: AverageVelocityFn,
    x: Tensor,
    config: ObjectiveConfig,
    *,
    noise: Tensor | None = None,
    t: Tensor | None = None,
    valid_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> LossOutput:
    """Plain flow matching on the same backbone: `‖u_θ(z_t, t, t) − (ε − x)‖²`, t logit-normal."""
    noise = _noise_and_check(x, noise, generator)
    if t is None:
        t = sample_logit_normal(
            x.shape[0],
            config.p_mean,
            config.p_std,
            device=x.device,
            dtype=x.dtype,
            generator=generator,
        )
    z = (1 - _per_row(t, x)) * x + _per_row(t, x) * noise
    target = noise - x
    prediction = u_fn(z, t, t)
    loss, per_sample = regression_loss(prediction, target, config, valid_mask)
    return LossOutput(loss, per_sample, prediction, target, t, t)


def _time_grid(steps: int, like: Tensor) -> Tensor:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1, dtype=like.dtype, device=like.device)


@torch.no_grad()
def sample_mean_flow(
    u_fn: AverageVelocityFn, noise: Tensor, steps: int = 1, *, rtc: RTCGuidance | None = None
) -> Tensor:
    """MeanFlow sampler: `z_r = z_t − (t − r)·u(z_t, r, t)` on a grid 1 → 0 (1 step = 1 NFE).

    `rtc` guides each step towards a previous chunk (`vla_core.rtc`). The guidance's data estimate
    `z_t − t·u(z_t, r, t)` is exact on the last step (r = 0) and extrapolates the average velocity
    on earlier ones; with one step the guidance acts once, at t = 1, where its weight is β."""
    grid = _time_grid(steps, noise)
    z = noise
    for t_value, r_value in itertools.pairwise(grid):
        t = t_value.expand(z.shape[0])
        r = r_value.expand(z.shape[0])

        def velocity_fn(z_t: Tensor, r: Tensor = r, t: Tensor = t) -> Tensor:
            return u_fn(z_t, r, t)

        if rtc is None:
            velocity = velocity_fn(z)
        else:
            velocity = guided_velocity(velocity_fn, z, float(t_value), rtc)
        z = z - (t_value - r_value) * velocity
    return z


@torch.no_grad()
def sample_euler(
    u_fn: AverageVelocityFn, noise: Tensor, steps: int = 10, *, rtc: RTCGuidance | None = None
) -> Tensor:
    """Flow-matching Euler sampler on the instantaneous velocity `u(z, t, t)`, t: 1 → 0.

    `rtc` inpaints the sample onto a previous chunk (real-time chunking, `vla_core.rtc`)."""
    grid = _time_grid(steps, noise)
    z = noise
    for t_value, r_value in itertools.pairwise(grid):
        t = t_value.expand(z.shape[0])

        def velocity_fn(z_t: Tensor, t: Tensor = t) -> Tensor:
            return u_fn(z_t, t, t)

        if rtc is None:
            velocity = velocity_fn(z)
        else:
            velocity = guided_velocity(velocity_fn, z, float(t_value), rtc)
        z = z - (t_value - r_value) * velocity
    return z
