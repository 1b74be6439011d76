"""Pins config validation (errors at construction, naming the field) and derived defaults."""

from __future__ import annotations

import dataclasses

import pytest

from vla_imf import (
    AttnResBackboneConfig,
    BackboneConfig,
    IMFPolicyConfig,
    ObjectiveConfig,
    VanillaBackboneConfig,
)


def test_defaults_resolve() -> None:
    imf = IMFPolicyConfig()
    assert imf.num_inference_steps == 1 and imf.lowdim_dims == (2,)
    assert imf.backbone == AttnResBackboneConfig(cond_dim=64)
    fm = IMFPolicyConfig(objective="flow_matching")
    assert fm.num_inference_steps == 10
    env = IMFPolicyConfig(lowdim_keys=("observation.state", "observation.environment_state"))
    assert env.lowdim_dims == (2, 16) and env.cond_dim == 64
    img = IMFPolicyConfig(image_keys=("observation.image",))
    assert img.cond_dim == 128 and img.backbone.cond_dim == 128
    assert img.backbone.n_cond_tokens == 4
    # Round-trips through asdict (serialisable).
    assert (
        IMFPolicyConfig(**{**dataclasses.asdict(imf), "objective_config": ObjectiveConfig()}) == imf
    )


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"backbone": "unet"}, "backbone"),
        ({"objective": "ddpm"}, "objective"),
        ({"n_action_steps": 16}, "exceeds horizon"),
        ({"lowdim_keys": ("observation.foo",)}, "lowdim_dims is required"),
        ({"lowdim_keys": ("a",), "lowdim_dims": (1, 2)}, "one entry per lowdim key"),
        ({"lowdim_keys": (), "image_keys": ()}, "at least one"),
        ({"image_keys": ("observation.state",)}, "duplicate"),
        ({"crop_shape": (100, 84)}, "crop_shape"),
        ({"image_keys": ("observation.image",), "crop_shape": (32, 32)}, "2x2"),
        ({"n_emb": 30}, "divisible by n_head"),
        ({"n_kv_head": 3}, "n_kv_head"),
        ({"attention_implementation": "cudnn"}, "attention_implementation"),
        ({"objective": "flow_matching", "tangent_source": "v_head"}, "v_head"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"backbone": "attnres_block", "attnres_block_size": 100}, "attnres_block_size"),
        ({"backbone": "attnres_block", "attnres_block_size": 0}, "attnres_block_size"),
        ({"action_patch": 5}, "action_patch"),
        ({"lowdim_fourier_bands": -1}, "lowdim_fourier_bands"),
        ({"action_patch": 0}, "action_patch"),
        (
            {"backbone": "vanilla", "causal_attn": True, "action_patch": 2},
            "causal_attn masks per action step",
        ),
        ({"gradient_checkpointing": True}, r"unknown IMFPolicyConfig keys policy\.gradient_chec"),
    ],
)
def test_policy_config_rejects(overrides: dict[str, object], match: str) -> None:
    """The flat form (vla-train's Hydra `policy` group) is validated like the nested one."""
    with pytest.raises(ValueError, match=match):
        IMFPolicyConfig.from_flat(overrides)


def test_objective_and_backbone_config_reject() -> None:
    with pytest.raises(ValueError, match="boundary_fraction"):
        ObjectiveConfig(boundary_fraction=1.5)
    with pytest.raises(ValueError, match="p_std"):
        ObjectiveConfig(p_std=0.0)
    with pytest.raises(ValueError, match="head dim"):
        AttnResBackboneConfig(n_emb=12, n_head=4, n_kv_head=1)
    with pytest.raises(ValueError, match="p_drop_attn"):
        VanillaBackboneConfig(p_drop_attn=1.0)
    with pytest.raises(ValueError, match="common base"):
        BackboneConfig()
    with pytest.raises(ValueError, match="must be 'vanilla'"):
        VanillaBackboneConfig(kind="attnres_full")
    with pytest.raises(ValueError, match="kind must be one of"):
        AttnResBackboneConfig(kind="vanilla")
    with pytest.raises(TypeError, match="gradient_checkpointing"):
        IMFPolicyConfig(gradient_checkpointing=True)  # type: ignore[call-arg]
    with pytest.raises(dataclasses.FrozenInstanceError):
        IMFPolicyConfig().horizon = 3  # type: ignore[misc]
