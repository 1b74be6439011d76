"""Pins min-max normalisation: [min, max] -> [−1, 1], exact inverse, flat dims, errors."""

from __future__ import annotations

import pytest
import torch

from vla_imf import MinMaxNormalizer


def test_maps_limits_to_unit_interval_and_inverts() -> None:
    norm = MinMaxNormalizer({"action": 2, "observation.state": 3})
    norm.fit(
        {
            "action": {"min": torch.tensor([0.0, 10.0]), "max": torch.tensor([512.0, 20.0])},
            "observation.state": {"min": [1.0, 2.0, 5.0], "max": [3.0, 2.0, 9.0]},
        }
    )
    y = norm.normalize("action", torch.tensor([[0.0, 10.0], [512.0, 20.0], [256.0, 15.0]]))
    assert torch.allclose(y, torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]))
    x = torch.randn(4, 3) * 10
    assert torch.allclose(
        norm.unnormalize("observation.state", norm.normalize("observation.state", x)), x, atol=1e-5
    )
    flat = norm.normalize("observation.state", torch.tensor([[1.0, 2.0, 9.0]]))
    assert torch.allclose(flat, torch.tensor([[-1.0, 0.0, 1.0]]))  # constant dim -> 0
    assert "action__scale" in norm.state_dict() and "fitted" in norm.state_dict()


def test_errors_name_the_problem() -> None:
    norm = MinMaxNormalizer({"action": 2})
    with pytest.raises(RuntimeError, match="not fitted"):
        norm.normalize("action", torch.zeros(1, 2))
    with pytest.raises(KeyError, match="missing keys"):
        norm.fit({})
    with pytest.raises(ValueError, match="2 values"):
        norm.fit({"action": {"min": torch.zeros(3), "max": torch.ones(3)}})
    with pytest.raises(ValueError, match="max < min"):
        norm.fit({"action": {"min": torch.ones(2), "max": torch.zeros(2)}})
    norm.fit({"action": {"min": torch.zeros(2), "max": torch.ones(2)}})
    with pytest.raises(KeyError, match="no key"):
        norm.normalize("observation.state", torch.zeros(1, 2))
    with pytest.raises(ValueError, match="2 features"):
        norm.normalize("action", torch.zeros(1, 3))
