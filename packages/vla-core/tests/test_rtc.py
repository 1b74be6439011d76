"""Pins the real-time-chunking math (vla_core.rtc) against the paper's formulas (arXiv 2506.07339)."""

from __future__ import annotations

import math

import pytest
import torch

from vla_core._testing import random_observation, tiny_pi0_config
from vla_core.pi0 import PI0Model
from vla_core.rtc import (
    RTCConfig,
    RTCGuidance,
    flow_time,
    guidance_weight,
    guided_velocity,
    paper_time,
    prefix_weights,
)


def test_time_conversion_maps_noise_and_data_ends() -> None:
    # ours: t = 1 noise, t = 0 data; paper: τ = 0 noise, τ = 1 data.
    assert paper_time(1.0) == 0.0 and paper_time(0.0) == 1.0
    assert paper_time(0.25) == pytest.approx(0.75)
    for t in (0.0, 0.1, 0.5, 0.9, 1.0):
        assert flow_time(paper_time(t)) == pytest.approx(t)
    # The interpolants agree: x_t = t·ε + (1−t)·x  ==  A^τ = τ·A + (1−τ)·ε at τ = 1 − t.
    gen = torch.Generator().manual_seed(0)
    x, eps = torch.randn(4, generator=gen), torch.randn(4, generator=gen)
    t = 0.3
    tau = paper_time(t)
    torch.testing.assert_close(t * eps + (1 - t) * x, tau * x + (1 - tau) * eps)


def test_guidance_weight_matches_paper_formula_and_clips() -> None:
    beta = 1e9
    for t in (0.2, 0.5, 0.8):
        tau = 1 - t
        r2 = (1 - tau) ** 2 / (tau**2 + (1 - tau) ** 2)
        assert guidance_weight(t, beta) == pytest.approx((1 - tau) / (tau * r2))
    assert guidance_weight(1.0, 5.0) == 5.0  # τ = 0: unbounded, clipped to β
    assert guidance_weight(0.5, 0.5) == 0.5  # (1−τ)/(τ r²) = 2 at τ = 0.5 -> clipped to β


@pytest.mark.parametrize("schedule", ["zeros", "ones", "linear", "exp"])
def test_prefix_weights_schedules(schedule: str) -> None:
    d, s, horizon = 2, 3, 10  # frozen 0..1, overlap 2..6, free 7..9
    weights = prefix_weights(d, s, horizon, schedule)  # type: ignore[arg-type]
    assert weights.shape == (horizon,)
    assert torch.all(weights[:d] == 1)
    assert torch.all(weights[horizon - s :] == 0)
    c = torch.tensor([(horizon - s - i) / (horizon - s - d + 1) for i in range(d, horizon - s)])
    expected = {
        "zeros": torch.zeros_like(c),
        "ones": torch.ones_like(c),
        "linear": c,
        "exp": c * torch.expm1(c) / (math.e - 1),
    }[schedule]
    torch.testing.assert_close(weights[d : horizon - s], expected)


def test_prefix_weights_reject_delay_beyond_overlap() -> None:
    with pytest.raises(ValueError, match="inference_delay"):
        prefix_weights(5, 6, 10, "exp")


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="prefix_schedule"):
        RTCConfig(prefix_schedule="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_guidance_weight"):
        RTCConfig(max_guidance_weight=float("nan"))


def test_guidance_from_previous_chunk_pads_and_checks_length() -> None:
    previous = torch.ones(1, 7, 2)
    guidance = RTCGuidance.from_previous_chunk(
        previous, inference_delay=2, execution_horizon=3, horizon=10, config=RTCConfig()
    )
    assert guidance.target.shape == (1, 10, 2)
    assert torch.all(guidance.target[:, 7:] == 0)
    with pytest.raises(ValueError, match="needs horizon - execution_horizon = 7"):
        RTCGuidance.from_previous_chunk(
            previous[:, :5], inference_delay=2, execution_horizon=3, horizon=10, config=RTCConfig()
        )


def _gaussian_velocity(sigma2: float, t: float):
    """Exact velocity E[ε − x | x_t] for data x ~ N(0, σ²I): linear in x_t."""
    slope = (t - (1 - t) * sigma2) / (t**2 + (1 - t) ** 2 * sigma2)
    return lambda x_t: slope * x_t, slope


def test_guided_velocity_linear_field_closed_form() -> None:
    """For u = a·x_t: x̂ = (1 − t·a)·x_t, J = (1 − t·a)·I, so the guided velocity is
    u − w·(1 − t·a)·W·(Y − x̂) exactly (float32 round-off only)."""
    gen = torch.Generator().manual_seed(1)
    x_t = torch.randn(2, 6, 3, generator=gen)
    target = torch.randn(2, 6, 3, generator=gen)
    weights = prefix_weights(2, 2, 6, "exp")
    guidance = RTCGuidance(target, weights, max_guidance_weight=5.0)
    t = 0.6
    velocity_fn, slope = _gaussian_velocity(0.5, t)
    guided = guided_velocity(velocity_fn, x_t, t, guidance)
    jacobian = 1 - t * slope
    estimate = jacobian * x_t
    w = guidance_weight(t, 5.0)
    expected = slope * x_t - w * jacobian * weights[None, :, None] * (target - estimate)
    torch.testing.assert_close(guided, expected)


def test_zero_guidance_weight_equals_plain_velocity() -> None:
    gen = torch.Generator().manual_seed(2)
    x_t = torch.randn(1, 5, 2, generator=gen)
    guidance = RTCGuidance(torch.randn(1, 5, 2, generator=gen), torch.ones(5), 0.0)
    velocity_fn, _ = _gaussian_velocity(1.0, 0.4)
    torch.testing.assert_close(guided_velocity(velocity_fn, x_t, 0.4, guidance), velocity_fn(x_t))


def _euler(
    x: torch.Tensor, steps: int, sigma2: float, guidance: RTCGuidance | None
) -> torch.Tensor:
    for k in range(steps):
        t = 1 - k / steps
        velocity_fn, _ = _gaussian_velocity(sigma2, t)
        u = velocity_fn(x) if guidance is None else guided_velocity(velocity_fn, x, t, guidance)
        x = x - u / steps
    return x


def test_frozen_prefix_is_reproduced_on_gaussian_model() -> None:
    """With the exact velocity of N(0, I) data and 50 Euler steps, RTC lands the frozen actions
    (weight 1) on the target to within 0.05 (ΠGDM guidance is approximate, not hard inpainting),
    while the actions beyond the overlap (weight 0) stay as far from it as plain sampling."""
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn(64, 8, 2, generator=gen)
    target = torch.randn(64, 8, 2, generator=gen)
    guidance = RTCGuidance(target, prefix_weights(3, 3, 8, "exp"), max_guidance_weight=100.0)
    plain = _euler(noise, 50, 1.0, None)
    guided = _euler(noise, 50, 1.0, guidance)
    frozen_error = (guided[:, :3] - target[:, :3]).abs().max()
    assert frozen_error < 0.05, frozen_error
    assert (plain[:, :3] - target[:, :3]).abs().mean() > 0.5
    # The free tail is not pulled towards the target (it is a fresh sample).
    assert (guided[:, 5:] - target[:, 5:]).abs().mean() > 0.5


@torch.no_grad()
def test_pi0_sample_actions_zero_weight_rtc_equals_plain() -> None:
    torch.manual_seed(0)
    config = tiny_pi0_config()
    model = PI0Model(config).eval()
    observation = random_observation(config, batch_size=2)
    noise = torch.randn(2, config.action_horizon, config.action_dim)
    plain = model.sample_actions(observation, noise, num_steps=3)
    target = torch.randn_like(noise)
    zero = RTCGuidance(target, torch.ones(config.action_horizon), max_guidance_weight=0.0)
    torch.testing.assert_close(model.sample_actions(observation, noise, 3, rtc=zero), plain)
    pulled = RTCGuidance(target, torch.ones(config.action_horizon), max_guidance_weight=5.0)
    guided = model.sample_actions(observation, noise, 3, rtc=pulled)
    assert (guided - target).abs().mean() < (plain - target).abs().mean()
