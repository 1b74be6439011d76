"""Tiny configs and synthetic data that tests (here and in vla-train) may import."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vla_imf.config import FLAT_BACKBONE_FIELDS, BackboneConfig, IMFPolicyConfig


def tiny_backbone_config(kind: str = "attnres_full", **overrides: Any) -> BackboneConfig:
    """A backbone small enough for f64 Jacobians and finite differences in milliseconds."""
    base: dict[str, Any] = dict(
        kind=kind,
        input_dim=2,
        output_dim=2,
        horizon=4,
        n_obs_steps=2,
        cond_dim=3,
        n_layer=2,
        n_head=4,
        n_emb=16,
        p_drop_emb=0.0,
        p_drop_attn=0.0,
    )
    if kind != "vanilla":
        base.update(n_kv_head=2, attnres_block_size=2)
    return BackboneConfig.from_dict({**base, **overrides})


def tiny_policy_config(**overrides: Any) -> IMFPolicyConfig:
    """A low-dim PushT-shaped policy (state 2-d, action 2-d) with a 2-layer, 32-wide backbone.

    `overrides` are flat (`backbone="vanilla", n_emb=..., action_patch=...`, as
    `IMFPolicyConfig.from_flat` reads them) or a nested `backbone` config."""
    base: dict[str, Any] = dict(
        action_dim=2,
        horizon=8,
        n_obs_steps=2,
        n_action_steps=4,
        lowdim_keys=("observation.state",),
        n_emb=32,
        n_layer=2,
        n_head=4,
        n_kv_head=1,
        p_drop_attn=0.0,
        lowdim_feature_dim=16,
        image_feature_dim=16,
        n_keypoints=8,
    )
    if not isinstance(overrides.get("backbone", ""), str):
        nested = {k: v for k, v in base.items() if k not in FLAT_BACKBONE_FIELDS}
        return IMFPolicyConfig(**{**nested, **overrides})
    base.update(overrides)
    return IMFPolicyConfig.from_flat(base)


def pusht_stats(config: IMFPolicyConfig) -> dict[str, dict[str, Tensor]]:
    """Normaliser statistics spanning PushT's pixel range [0, 512] for every low-dim key."""
    assert config.lowdim_dims is not None
    stats = {
        key: {"min": torch.zeros(dim), "max": torch.full((dim,), 512.0)}
        for key, dim in zip(config.lowdim_keys, config.lowdim_dims)
    }
    stats["action"] = {
        "min": torch.zeros(config.action_dim),
        "max": torch.full((config.action_dim,), 512.0),
    }
    return stats


def random_batch(
    config: IMFPolicyConfig, batch: int = 4, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """A batch with the key layout `IMFPolicy.compute_loss` expects (values in PushT ranges)."""
    assert config.lowdim_dims is not None
    out: dict[str, Tensor] = {}
    for key, dim in zip(config.lowdim_keys, config.lowdim_dims):
        out[key] = torch.rand(batch, config.n_obs_steps, dim, generator=generator) * 512
    for key in config.image_keys:
        out[key] = torch.rand(batch, config.n_obs_steps, *config.image_shape, generator=generator)
    out["action"] = torch.rand(batch, config.horizon, config.action_dim, generator=generator) * 512
    out["action_is_pad"] = torch.zeros(batch, config.horizon, dtype=torch.bool)
    return out
