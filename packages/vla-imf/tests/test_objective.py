"""Pins the iMF objective to exact oracles (float64 unless stated).

- 1-D Gaussian data with closed-form u and v: V − v ≤ 1e-10 through `imf_loss`; 1-step and
  k-step samples reproduce the data law exactly (pushforward of noise).
- Single-point data: the exact u gives loss ≤ 1e-24 with the boundary tangent.
- r = t on every row: iMF loss == flow-matching loss (same noise and t).
- Tangent order: du/dt == ∂_z u·v + ∂_t u from autograd Jacobians (≤ 1e-12); the swapped order
  disagrees by > 1e-2.
"""

from __future__ import annotations

import math

import pytest
import torch

from vla_imf import (
    ForwardADUnsupportedError,
    ObjectiveConfig,
    build_backbone,
    flow_matching_loss,
    imf_compound_velocity,
    imf_loss,
    jvp_du_dt,
    regression_loss,
    sample_euler,
    sample_mean_flow,
    sample_time_pairs,
)
from vla_imf._testing import tiny_backbone_config

MU, SIGMA = 0.7, 0.3


# ------------------------------------------------------------------- analytic Gaussian oracle
def _gauss_stats(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = (1 - t) * MU
    std = torch.sqrt((1 - t) ** 2 * SIGMA**2 + t**2)
    return mean, std


def analytic_v(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Marginal velocity E[ε − x | z_t] for x ~ N(μ, σ²), ε ~ N(0, 1); z [B, 1, 1], t [B]."""
    t3 = t[:, None, None]
    mean, std = _gauss_stats(t3)
    dstd = (t3 - (1 - t3) * SIGMA**2) / std
    return -MU + dstd / std * (z - mean)


def analytic_u(z: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Average velocity (z_t − z_r)/(t − r) along the (affine) marginal flow map; needs r < t."""
    r3, t3 = r[:, None, None], t[:, None, None]
    mean_t, std_t = _gauss_stats(t3)
    mean_r, std_r = _gauss_stats(r3)
    z_r = mean_r + std_r / std_t * (z - mean_t)
    return (z - z_r) / (t3 - r3)


def test_gaussian_identity_v_equals_compound_velocity() -> None:
    gen = torch.Generator().manual_seed(0)
    batch = 512
    x = MU + SIGMA * torch.randn(batch, 1, 1, generator=gen, dtype=torch.float64)
    noise = torch.randn(batch, 1, 1, generator=gen, dtype=torch.float64)
    t = 0.05 + 0.9 * torch.rand(batch, generator=gen, dtype=torch.float64)
    r = t * torch.rand(batch, generator=gen, dtype=torch.float64) * 0.95
    out = imf_loss(analytic_u, x, ObjectiveConfig(), noise=noise, r=r, t=t, velocity_fn=analytic_v)
    z = (1 - t[:, None, None]) * x + t[:, None, None] * noise
    err = (out.prediction - analytic_v(z, t)).abs().max().item()
    assert err <= 1e-10, err
    # u alone is *not* v (the JVP term matters): the check above is not vacuous.
    assert (analytic_u(z, r, t) - analytic_v(z, t)).abs().max().item() > 1e-2


@pytest.mark.parametrize("steps", [1, 3])
def test_gaussian_mean_flow_samples_push_noise_to_the_data_law(steps: int) -> None:
    noise = torch.randn(
        20000, 1, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    grid_safe_u = analytic_u  # r < t on every grid interval
    samples = sample_mean_flow(grid_safe_u, noise, steps)
    # The flow map of a Gaussian is affine: the sample is exactly μ + σ·ε.
    assert torch.allclose(samples, MU + SIGMA * noise, atol=1e-12)
    assert abs(samples.mean().item() - MU) < 0.01
    assert abs(samples.std().item() - SIGMA) < 0.01


def test_euler_on_exact_velocity_converges_with_steps() -> None:
    noise = torch.randn(256, 1, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = MU + SIGMA * noise

    def velocity_as_u(z: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert torch.equal(r, t)  # Euler must query the instantaneous velocity u(z, t, t)
        return analytic_v(z, t)

    errors = [(sample_euler(velocity_as_u, noise, k) - exact).abs().max().item() for k in (5, 50)]
    assert errors[1] < errors[0] / 5
    assert errors[1] < 0.05  # first order: ~10x smaller error for 10x more steps


def test_single_point_data_gives_zero_loss_with_boundary_tangent() -> None:
    x0 = torch.tensor([[0.3, -1.2], [0.5, 0.9], [2.0, -0.1]], dtype=torch.float64)

    def exact_u(z: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (z - x0) / t[:, None, None]

    batch = 64
    x = x0.expand(batch, -1, -1)
    cfg = ObjectiveConfig(boundary_fraction=0.25)
    out = imf_loss(exact_u, x, cfg, generator=torch.Generator().manual_seed(3))
    assert out.loss.item() <= 1e-24
    assert (out.t > out.r).sum() > 0  # some rows really exercised the JVP term


# ------------------------------------------------------------------- tangent order
def _toy_u(z: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth u(z, r, t) whose r- and t-derivatives differ."""
    return torch.sin(z * t[:, None]) + z**2 * r[:, None] ** 2 + torch.exp(-t)[:, None] * z


def test_jvp_tangent_order_matches_autograd_jacobians() -> None:
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    r = torch.rand(3, generator=gen, dtype=torch.float64) * 0.5
    t = 0.5 + torch.rand(3, generator=gen, dtype=torch.float64) * 0.5
    v = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    _, du_dt = jvp_du_dt(_toy_u, z, r, t, v)
    expected = torch.empty_like(z)
    for b in range(3):

        def single(zb: torch.Tensor, tb: torch.Tensor, b: int = b) -> torch.Tensor:
            return _toy_u(zb[None], r[b : b + 1], tb[None])[0]

        jac_z, jac_t = torch.autograd.functional.jacobian(single, (z[b], t[b]))
        expected[b] = jac_z @ v[b] + jac_t
    assert (du_dt - expected).abs().max().item() <= 1e-12

    # Calling the network with (z, t, r) while keeping tangents (v, 0, 1) differentiates r.
    def swapped(zz: torch.Tensor, rr: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        return _toy_u(zz, tt, rr)

    _, wrong = jvp_du_dt(swapped, z, t, r, v)
    assert (wrong - expected).abs().max().item() > 1e-2


def test_forward_ad_missing_raises_named_error() -> None:
    class NoForwardAD(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # type: ignore[no-untyped-def, override]
            return x * 2

        @staticmethod
        def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
            return grad * 2

    def u_fn(z: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return NoForwardAD.apply(z) * t[:, None]

    z = torch.randn(2, 3)
    with pytest.raises(ForwardADUnsupportedError, match="forward-mode AD"):
        jvp_du_dt(u_fn, z, torch.zeros(2), torch.ones(2), torch.randn(2, 3))


# ------------------------------------------------------------------- time sampler
def test_time_pairs_boundary_rows_ordering_and_logit_normal_law() -> None:
    cfg = ObjectiveConfig(p_mean=-0.4, p_std=1.0, boundary_fraction=0.5)
    r, t = sample_time_pairs(1001, cfg, generator=torch.Generator().manual_seed(5))
    assert torch.equal(r[:500], t[:500])
    assert bool((t[500:] > r[500:]).all())
    assert bool((t >= r).all()) and bool((r > 0).all()) and bool((t < 1).all())
    # With no boundary rows, {r, t} is the i.i.d. pair: pooled logits are N(p_mean, p_std²).
    r, t = sample_time_pairs(
        40000, ObjectiveConfig(boundary_fraction=0.0), generator=torch.Generator().manual_seed(6)
    )
    logits = torch.logit(torch.cat([r, t]).double())
    assert abs(logits.mean().item() + 0.4) < 0.02
    assert abs(logits.std().item() - 1.0) < 0.02


# ------------------------------------------------------------------- loss reductions
def test_all_boundary_rows_reduce_imf_to_flow_matching_on_a_real_backbone() -> None:
    torch.manual_seed(7)
    model = build_backbone(tiny_backbone_config("attnres_full")).double().eval()
    cond = torch.randn(5, 2, 3, dtype=torch.float64)

    def u_fn(z: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(z, r, t, cond)

    x = torch.randn(5, 4, 2, dtype=torch.float64)
    noise = torch.randn_like(x)
    t = torch.rand(5, dtype=torch.float64)
    cfg = ObjectiveConfig(boundary_fraction=1.0)
    imf = imf_loss(u_fn, x, cfg, noise=noise, r=t, t=t)
    fm = flow_matching_loss(u_fn, x, cfg, noise=noise, t=t)
    assert abs(imf.loss.item() - fm.loss.item()) <= 1e-12 * fm.loss.item()
    # And with sampled times, boundary_fraction=1 puts every row on r = t.
    sampled = imf_loss(u_fn, x, cfg, generator=torch.Generator().manual_seed(8))
    assert torch.equal(sampled.r, sampled.t)


def test_split_jvp_path_matches_fused_loss_and_gradients() -> None:
    torch.manual_seed(9)
    model = build_backbone(tiny_backbone_config("attnres_block")).double().eval()
    cond = torch.randn(6, 2, 3, dtype=torch.float64)
    x = torch.randn(6, 4, 2, dtype=torch.float64)
    noise = torch.randn_like(x)
    r, t = sample_time_pairs(6, ObjectiveConfig(), dtype=torch.float64)

    def u_fn(z: torch.Tensor, rr: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        return model(z, rr, tt, cond)

    grads = []
    losses = []
    for fused in (True, False):
        model.zero_grad()
        out = imf_loss(
            u_fn, x, ObjectiveConfig(), noise=noise, r=r, t=t, differentiate_jvp_primal=fused
        )
        out.loss.backward()
        losses.append(out.loss.item())
        grads.append(
            torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        )
    assert abs(losses[0] - losses[1]) <= 1e-12 * abs(losses[0])
    assert (grads[0] - grads[1]).abs().max().item() <= 1e-12
    assert grads[0].abs().max().item() > 0


def test_adaptive_weighting_value_and_gradient_scaling() -> None:
    pred = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    target = torch.randn(4, 3, 2, dtype=torch.float64)
    cfg = ObjectiveConfig(adaptive_p=0.75, adaptive_c=1e-2)
    loss, per_sample = regression_loss(pred, target, cfg)
    raw = (pred - target).pow(2).sum((1, 2))
    assert torch.allclose(per_sample, raw / (raw + 1e-2) ** 0.75, rtol=1e-14)
    loss.backward()
    weight = ((raw + 1e-2) ** -0.75 / 4).detach()
    expected_grad = 2 * (pred - target).detach() * weight[:, None, None]
    assert torch.allclose(pred.grad, expected_grad, rtol=1e-12)


def test_padding_mask_excludes_padded_rows() -> None:
    pred = torch.randn(2, 5, 2)
    target = torch.randn(2, 5, 2)
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    loss, _ = regression_loss(pred, target, ObjectiveConfig(), valid)
    moved = pred.clone()
    moved[1, 3:] += 100.0
    loss_moved, _ = regression_loss(moved, target, ObjectiveConfig(), valid)
    assert loss.item() == loss_moved.item()
    manual = ((pred - target).pow(2) * valid[..., None]).sum() / 2
    assert math.isclose(loss.item(), manual.item(), rel_tol=1e-6)
    with pytest.raises(ValueError, match="valid_mask"):
        regression_loss(pred, target, ObjectiveConfig(), valid.float())


def test_v_head_tangent_adds_its_flow_matching_loss() -> None:
    x = torch.randn(8, 1, 1, dtype=torch.float64)
    noise = torch.randn_like(x)
    t = 0.2 + 0.6 * torch.rand(8, dtype=torch.float64)
    r = t * 0.5
    scale = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)

    def v_fn(z: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        return scale * analytic_v(z, tt)

    out = imf_loss(analytic_u, x, ObjectiveConfig(), noise=noise, r=r, t=t, velocity_fn=v_fn)
    assert out.aux_loss is not None
    z = (1 - t[:, None, None]) * x + t[:, None, None] * noise
    expected_aux = (scale * analytic_v(z, t) - (noise - x)).pow(2).sum((1, 2)).mean()
    assert torch.allclose(out.aux_loss, expected_aux, rtol=1e-12)
    out.loss.backward()
    assert scale.grad is not None and scale.grad.abs().item() > 0
    # The tangent is detached: with the exact u, only the aux loss reaches `scale`.
    (grad_aux,) = torch.autograd.grad(expected_aux, scale)
    assert torch.allclose(scale.grad, grad_aux, rtol=1e-10)


def test_imf_loss_rejects_bad_inputs() -> None:
    x = torch.randn(4, 2, 2)
    with pytest.raises(ValueError, match="t >= r"):
        imf_loss(_toy_u_3d, x, ObjectiveConfig(), r=torch.ones(4), t=torch.zeros(4))
    with pytest.raises(ValueError, match="both r and t"):
        imf_loss(_toy_u_3d, x, ObjectiveConfig(), t=torch.ones(4))
    with pytest.raises(ValueError, match="noise"):
        imf_loss(_toy_u_3d, x, ObjectiveConfig(), noise=torch.randn(4, 2))
    with pytest.raises(ValueError, match="steps"):
        sample_mean_flow(_toy_u_3d, x, 0)


def _toy_u_3d(z: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return z * t[:, None, None] + r[:, None, None]


def test_compound_velocity_detaches_the_jvp_term() -> None:
    z = torch.randn(3, 2, 2)
    w = torch.tensor(1.5, requires_grad=True)

    def u_fn(zz: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return w * zz * t[:, None, None] ** 2

    r, t = torch.full((3,), 0.2), torch.full((3,), 0.8)
    _, du_dt, compound = imf_compound_velocity(u_fn, z, r, t, torch.zeros_like(z))
    assert not du_dt.requires_grad
    assert torch.allclose(du_dt, 2 * w.detach() * z * 0.8)
    (grad,) = torch.autograd.grad(compound.sum(), w)
    assert torch.allclose(grad, (z * 0.64).sum())  # only the primal u is differentiated
