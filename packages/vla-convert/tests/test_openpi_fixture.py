"""End to end against openpi's own JAX model: convert a committed orbax checkpoint made by
`fixtures/make_openpi_fixture.py` (openpi `Pi0Config(...).create`, LoRA on both towers with
per-tower / per-module ranks and alphas, rsLoRA on the expert, every leaf random including the
zero-initialised LoRA B, adaRMS `Dense_0` and `img/head`) and compare vla-core's outputs with
openpi's `sample_actions` for the same noise, fp32:
- velocity at t = 1 (openpi: `noise − sample_actions(num_steps=1)`) and 10-step actions, both at
  1e-5 absolute (values of magnitude ~3–6) with `time_arithmetic="openpi"`;
- `"exact"` arithmetic stays within 1e-3 (it is a different but documented rounding);
- the test can fail: a sign flip in one SigLIP query weight, or a wrong attention alpha for one
  tower, moves the velocity by > 1e-3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vla_convert.convert import convert_openpi
from vla_convert.lora_config import LoraDeclaration
from vla_core.pi0 import Observation, PI0Model
from vla_core.state_dict import load_pretrained

FIXTURE = Path(__file__).parent / "fixtures" / "openpi"
META: dict[str, Any] = json.loads((FIXTURE / "meta.json").read_text())
TOL = 1e-5


def _declarations(alpha_factor: float = 1.0) -> list[LoraDeclaration]:
    """The fixture's attention alphas (not stored in checkpoints); ranks come from the shapes."""
    out = []
    for tower, lora in META["lora"].items():
        alpha = lora["attn_alpha"] * (alpha_factor if tower == "backbone" else 1.0)
        out.append(LoraDeclaration(tower, "attn", alpha=alpha, rslora=lora["attn_rslora"]))
    return out


def _convert(name: str, out: Path, alpha_factor: float = 1.0) -> PI0Model:
    pi05 = META["cases"][name]["pi05"]
    convert_openpi(
        FIXTURE / META["cases"][name]["checkpoint"],
        out,
        lora=_declarations(alpha_factor),
        model="pi05" if pi05 else "pi0",
        action_horizon=META["action_horizon"],
        config_overrides={"num_cameras": 3, "max_token_len": META["max_token_len"]},
    )
    return load_pretrained(out).eval()


def _observation(io: dict[str, np.ndarray], pi05: bool) -> Observation:
    image = META["image"]
    blocks = io["image_blocks"]  # [B, cams, 16, 16, 3] uint8
    big = blocks.repeat(image["repeat"], axis=2).repeat(image["repeat"], axis=3)
    images = big.astype(np.float32) / np.float32(127.5) - np.float32(1.0)  # as the generator
    return Observation(
        images=torch.from_numpy(images).permute(0, 1, 4, 2, 3).contiguous(),
        image_masks=torch.from_numpy(io["image_masks"]),
        tokens=torch.from_numpy(io["tokens"]).long(),
        token_mask=torch.from_numpy(io["token_mask"]),
        state=None if pi05 else torch.from_numpy(io["state"]),
    )


@pytest.fixture(scope="module", params=["pi0", "pi05"])
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    name = request.param
    model = _convert(name, tmp_path_factory.mktemp(name) / "converted")
    io = dict(np.load(FIXTURE / f"{name}_io.npz"))
    return name, model, io, _observation(io, META["cases"][name]["pi05"])


def _velocity_t1(
    model: PI0Model, obs: Observation, noise: torch.Tensor, mode: str = "cached", **kw: Any
) -> torch.Tensor:
    with torch.no_grad():
        time = torch.ones(noise.shape[0])
        return model.predict_velocity(obs, noise, time, mode=mode, **kw)  # type: ignore[arg-type]


def test_conversion_recorded_per_tower_lora(case: Any) -> None:
    name, model, _, _ = case
    assert model.config.variant == name
    lora = META["lora"]
    assert lora["backbone"]["attn_rank"] != lora["backbone"]["ffn_rank"]  # per-module ranks
    assert lora["backbone"]["attn_rank"] != lora["expert"]["attn_rank"]  # per-tower ranks


@pytest.mark.parametrize("mode", ["cached", "joint"])
def test_velocity_at_t1_matches_openpi_jax(case: Any, mode: str) -> None:
    name, model, io, obs = case
    noise = torch.from_numpy(io["noise"])
    expected = torch.from_numpy(io["velocity_t1"])
    got = _velocity_t1(model, obs, noise, mode)
    error = float((got - expected).abs().max())
    print(
        f"{name} velocity(t=1) max |Δ| vs openpi JAX = {error:.3g} (|v| ≤ {expected.abs().max():.2f})"
    )
    assert error <= TOL


def test_sample_actions_match_openpi_jax(case: Any) -> None:
    name, model, io, obs = case
    noise = torch.from_numpy(io["noise"])
    expected = torch.from_numpy(io["actions_10_steps"])
    got = model.sample_actions(obs, noise=noise, num_steps=META["num_steps"])
    error = float((got - expected).abs().max())
    print(f"{name} actions (10 steps) max |Δ| vs openpi JAX = {error:.3g}")
    assert error <= TOL
    exact = model.sample_actions(obs, noise=noise, num_steps=10, time_arithmetic="exact")
    assert float((exact - expected).abs().max()) <= 1e-3


def test_fixture_is_sensitive_to_the_vision_tower(case: Any) -> None:
    _, model, io, obs = case
    noise = torch.from_numpy(io["noise"])
    expected = torch.from_numpy(io["velocity_t1"])
    query = model.vision_tower.state_dict()
    name = next(k for k in query if "q_proj.weight" in k)
    with torch.no_grad():
        param = dict(model.vision_tower.named_parameters())[name]
        param.neg_()
        try:
            broken = _velocity_t1(model, obs, noise)
        finally:
            param.neg_()
    assert float((broken - expected).abs().max()) > 1e-3


def test_wrong_lora_alpha_is_visible(case: Any, tmp_path: Path) -> None:
    name, _, io, obs = case
    wrong = _convert(name, tmp_path / "wrong", alpha_factor=2.0)
    noise = torch.from_numpy(io["noise"])
    expected = torch.from_numpy(io["velocity_t1"])
    assert float((_velocity_t1(wrong, obs, noise) - expected).abs().max()) > 1e-3
