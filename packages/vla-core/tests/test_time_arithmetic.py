"""Pins both time arithmetics of sampling: openpi's float32 grid / embedding and the exact ones.

References: the grid against a float32 `t += dt` loop on torch tensors (openpi's PyTorch port) and
against `1 − k/N`; the embedding against a float64 evaluation of openpi's formula (exact: 1e-7;
openpi: float32 rounding of angles up to ~1571 rad, so 2e-4). Bit-level agreement with JAX is pinned
end to end by vla-convert's openpi fixture test (`test_openpi_fixture.py`).
"""

from __future__ import annotations

import pytest
import torch

from vla_core._testing import perturb_adarms, random_actions, random_observation, tiny_pi0_config
from vla_core.pi0 import PI0Model
from vla_core.time_arithmetic import euler_time_grid, posemb_sincos


def _float64_embedding(time: torch.Tensor, dim: int) -> torch.Tensor:
    fraction = torch.linspace(0, 1, dim // 2, dtype=torch.float64)
    period = 4e-3 * (4.0 / 4e-3) ** fraction
    angle = time.double()[:, None] * 2 * torch.pi / period
    return torch.cat([angle.sin(), angle.cos()], -1)


@pytest.mark.parametrize("num_steps", [1, 3, 10, 50])
def test_openpi_grid_is_float32_accumulation(num_steps: int) -> None:
    dt = -1.0 / num_steps
    t, expected = torch.tensor(1.0, dtype=torch.float32), []
    while t >= -dt / 2:
        expected.append(float(t))
        t = t + dt
    assert euler_time_grid(num_steps, "openpi") == expected
    exact = euler_time_grid(num_steps, "exact")
    assert len(exact) == num_steps
    assert max(abs(t - (1.0 - k / num_steps)) for k, t in enumerate(exact)) <= 1e-15
    assert max(abs(a - b) for a, b in zip(exact, expected)) <= 1e-6


def test_grids_differ_in_float32_rounding() -> None:
    openpi, exact = euler_time_grid(10, "openpi"), euler_time_grid(10, "exact")
    assert openpi != exact  # 0.9f + (-0.1f) ... drifts from k/10 in the last bits


@pytest.mark.parametrize("dim", [8, 32, 1024])
def test_embeddings_follow_openpi_formula(dim: int) -> None:
    time = torch.tensor([0.0, 0.37, 0.9, 1.0])
    reference = _float64_embedding(time, dim)
    exact = posemb_sincos(time, dim, 4e-3, 4.0, "exact")
    openpi = posemb_sincos(time, dim, 4e-3, 4.0, "openpi")
    assert exact.dtype == openpi.dtype == torch.float32
    assert (exact.double() - reference).abs().max() <= 1e-7
    assert (openpi.double() - reference).abs().max() <= 2e-4
    assert torch.equal(openpi[0], exact[0])  # t = 0: every angle is 0


def test_unknown_arithmetic_is_refused() -> None:
    with pytest.raises(ValueError, match="time_arithmetic must be one of"):
        posemb_sincos(torch.ones(1), 8, 4e-3, 4.0, "float16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        euler_time_grid(0)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_sample_actions_uses_the_chosen_arithmetic(variant: str) -> None:
    torch.manual_seed(0)
    model = PI0Model(tiny_pi0_config(variant)).eval()
    if variant == "pi05":
        perturb_adarms(model, std=0.1)  # zero-init adaRMS would make the time invisible
    obs = random_observation(model.config)
    noise = random_actions(model.config, seed=7)
    sampled = {}
    for arithmetic in ("openpi", "exact"):
        x = noise.clone()
        with torch.no_grad():
            for t in euler_time_grid(4, arithmetic):  # type: ignore[arg-type]
                time = torch.full((2,), t)
                v = model.predict_velocity(obs, x, time, time_arithmetic=arithmetic)  # type: ignore[arg-type]
                x = x + (-1 / 4) * v
        got = model.sample_actions(obs, noise=noise, num_steps=4, time_arithmetic=arithmetic)  # type: ignore[arg-type]
        assert (got - x).abs().max() <= 1e-5
        sampled[arithmetic] = got
    assert not torch.equal(sampled["openpi"], sampled["exact"])
    default = model.sample_actions(obs, noise=noise, num_steps=4)
    assert torch.equal(default, sampled["openpi"])
