"""Pins the config's dict forms: one backbone config per kind (fields of another kind rejected,
naming the field), `IMFPolicyConfig.from_dict` round trips, and the flat vla-imf 0.1 form (as
written into vla-train config.json files) still loading, with a DeprecationWarning."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from vla_imf import (
    AttnResBackboneConfig,
    BackboneConfig,
    IMFPolicyConfig,
    VanillaBackboneConfig,
)

#: `dataclasses.asdict(IMFPolicyConfig(backbone="attnres_block", ...))` as vla-imf 0.1 wrote it
#: into a vla-train checkpoint's config.json (every field, flat, `gradient_checkpointing` included).
OLD_FLAT: dict[str, Any] = {
    "backbone": "attnres_block",
    "objective": "imf",
    "action_dim": 2,
    "horizon": 16,
    "n_obs_steps": 2,
    "n_action_steps": 8,
    "lowdim_keys": ["observation.state", "observation.environment_state"],
    "lowdim_dims": [2, 16],
    "image_keys": [],
    "image_shape": [3, 96, 96],
    "crop_shape": [84, 84],
    "lowdim_feature_dim": 64,
    "image_feature_dim": 64,
    "n_keypoints": 32,
    "n_emb": 64,
    "n_layer": 3,
    "n_head": 4,
    "n_kv_head": 2,
    "p_drop_emb": 0.0,
    "p_drop_attn": 0.01,
    "causal_attn": False,
    "n_cond_layers": 0,
    "ffn_mult": 2.667,
    "rope_theta": 10000.0,
    "attnres_block_size": 3,
    "time_scale": 1.0,
    "tangent_source": "boundary",
    "objective_config": {
        "p_mean": -0.4,
        "p_std": 1.0,
        "boundary_fraction": 0.5,
        "adaptive_p": 0.0,
        "adaptive_c": 0.01,
        "mask_padding": True,
    },
    "num_inference_steps": 1,
    "attention_implementation": "sdpa",
    "action_patch": 2,
    "gradient_checkpointing": True,
}

NESTED = IMFPolicyConfig(
    backbone=AttnResBackboneConfig(
        kind="attnres_block",
        n_emb=64,
        n_layer=3,
        n_kv_head=2,
        p_drop_attn=0.01,
        attnres_block_size=3,
        action_patch=2,
    ),
    lowdim_keys=("observation.state", "observation.environment_state"),
    num_inference_steps=1,
)


def _json_round_trip(config: IMFPolicyConfig, tmp_path: Path) -> IMFPolicyConfig:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"policy": dataclasses.asdict(config)}))
    return IMFPolicyConfig.from_dict(json.loads(path.read_text())["policy"])


def test_old_flat_config_json_loads_with_warnings_and_equals_the_nested_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"policy": OLD_FLAT, "hydra": {}}))
    with pytest.warns(DeprecationWarning) as record:
        loaded = IMFPolicyConfig.from_dict(json.loads(path.read_text())["policy"])
    messages = [str(w.message) for w in record]
    assert any("IMFPolicyConfig.gradient_checkpointing is ignored" in m for m in messages)
    assert any("flat IMFPolicyConfig dict" in m for m in messages)
    assert loaded == NESTED
    assert type(loaded.backbone) is AttnResBackboneConfig
    assert loaded.backbone.horizon == 16 and loaded.backbone.cond_dim == 64


def test_flat_vanilla_drops_attnres_fields_at_their_defaults() -> None:
    """0.1 wrote every field; another kind's field at its default is dropped, not an error."""
    old = {**OLD_FLAT, "backbone": "vanilla", "n_kv_head": 1, "attnres_block_size": 4}
    old.update(action_patch=1, causal_attn=True, n_cond_layers=2)
    del old["gradient_checkpointing"]
    with pytest.warns(DeprecationWarning, match="flat IMFPolicyConfig dict"):
        loaded = IMFPolicyConfig.from_dict(old)
    expected = VanillaBackboneConfig(
        n_emb=64, n_layer=3, p_drop_attn=0.01, causal_attn=True, n_cond_layers=2
    )
    assert loaded == dataclasses.replace(NESTED, backbone=expected)


@pytest.mark.parametrize("key", ["attnres_block_size", "n_kv_head", "rope_theta"])
def test_vanilla_refuses_attnres_fields_naming_them(key: str) -> None:
    value = {"attnres_block_size": 2, "n_kv_head": 2, "rope_theta": 500.0}[key]
    with pytest.raises(TypeError, match=key):
        VanillaBackboneConfig(**{key: value})  # type: ignore[arg-type]
    # The nested dict form is strict even at the default value.
    default = {f.name: f.default for f in dataclasses.fields(AttnResBackboneConfig)}[key]
    with pytest.raises(ValueError, match=rf"backbone\.{key} applies to backbone kind\(s\)"):
        BackboneConfig.from_dict({"kind": "vanilla", key: default})
    with pytest.raises(ValueError, match=rf"backbone\.{key} applies to"):
        IMFPolicyConfig(backbone={"kind": "vanilla", key: value})  # type: ignore[arg-type]
    # The flat form refuses a value that would have been silently ignored before.
    with pytest.raises(ValueError, match=rf"policy\.{key}={value!r} applies to"):
        IMFPolicyConfig.from_flat({"backbone": "vanilla", key: value})


@pytest.mark.parametrize("key", ["causal_attn", "n_cond_layers"])
def test_attnres_refuses_vanilla_fields_naming_them(key: str) -> None:
    value = {"causal_attn": True, "n_cond_layers": 2}[key]
    with pytest.raises(TypeError, match=key):
        AttnResBackboneConfig(**{key: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"backbone\.{key} applies to backbone kind\(s\) \['van"):
        BackboneConfig.from_dict({"kind": "attnres_full", key: value})
    with pytest.raises(ValueError, match=rf"policy\.{key}={value!r} applies to"):
        IMFPolicyConfig.from_flat({"backbone": "attnres_block", key: value})


def test_unknown_backbone_keys_and_kinds_are_named() -> None:
    with pytest.raises(ValueError, match=r"unknown key backbone\.n_expert"):
        BackboneConfig.from_dict({"kind": "vanilla", "n_expert": 2})
    with pytest.raises(ValueError, match=r"backbone\.kind must be one of"):
        BackboneConfig.from_dict({"kind": "unet"})
    with pytest.raises(ValueError, match=r"unknown IMFPolicyConfig keys policy\.n_expert"):
        IMFPolicyConfig.from_dict({"n_expert": 2})
    mixed = {"backbone": {"kind": "vanilla"}, "n_emb": 64}
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match=r"\['n_emb'\] beside"):
        IMFPolicyConfig.from_dict(mixed)


@pytest.mark.parametrize(
    "backbone",
    [
        VanillaBackboneConfig(n_emb=32, n_layer=2, causal_attn=True, n_cond_layers=1),
        AttnResBackboneConfig(n_emb=32, n_layer=2, n_kv_head=2, action_patch=4),
        AttnResBackboneConfig(kind="attnres_block", n_layer=2, attnres_block_size=3),
    ],
    ids=["vanilla", "attnres_full", "attnres_block"],
)
def test_nested_config_round_trips_through_json(backbone: BackboneConfig, tmp_path: Path) -> None:
    config = IMFPolicyConfig(
        backbone=backbone, image_keys=("observation.image",), horizon=8, n_action_steps=4
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the nested form warns about nothing
        loaded = _json_round_trip(config, tmp_path)
    assert loaded == config and type(loaded.backbone) is type(backbone)
    # Built from a dict directly (the constructor accepts the backbone's dict, as for
    # objective_config), too.
    assert IMFPolicyConfig(**dataclasses.asdict(config)) == config  # type: ignore[arg-type]


def test_policy_fills_in_the_task_shape() -> None:
    config = IMFPolicyConfig(
        backbone=VanillaBackboneConfig(horizon=4, input_dim=7, cond_dim=3),
        action_dim=3,
        horizon=10,
        n_obs_steps=3,
        n_action_steps=4,
        image_keys=("observation.image",),
    )
    shape = {k: getattr(config.backbone, k) for k in ("input_dim", "output_dim", "horizon")}
    assert shape == {"input_dim": 3, "output_dim": 3, "horizon": 10}
    assert config.backbone.n_obs_steps == 3 and config.backbone.cond_dim == 128
    # The backbone is validated with the policy's horizon (action_patch must divide it).
    with pytest.raises(ValueError, match="action_patch must be >= 1 and divide horizon"):
        IMFPolicyConfig(backbone={"action_patch": 3})  # type: ignore[arg-type]
    assert IMFPolicyConfig(backbone={"action_patch": 3}, horizon=9).action_patch == 3  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backbone must be a VanillaBackboneConfig"):
        IMFPolicyConfig(backbone="vanilla")  # type: ignore[arg-type]
