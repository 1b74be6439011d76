"""Input validation shared by the backbones: errors name the argument and the expected shape."""

from __future__ import annotations

from torch import Tensor

from vla_imf.backbone_config import BackboneConfig


def check_backbone_inputs(
    config: BackboneConfig, sample: Tensor, r: Tensor, t: Tensor, cond: Tensor
) -> None:
    batch = sample.shape[0]
    if sample.dim() != 3 or sample.shape[1:] != (config.horizon, config.input_dim):
        raise ValueError(
            f"sample must be [B, {config.horizon}, {config.input_dim}], got {tuple(sample.shape)}"
        )
    for name, value in (("r", r), ("t", t)):
        if value.shape != (batch,):
            raise ValueError(f"{name} must be a float tensor [B={batch}], got {tuple(value.shape)}")
        if not value.is_floating_point():
            raise ValueError(f"{name} must be floating point (differentiable), got {value.dtype}")
    if cond.dim() != 3 or cond.shape != (batch, config.n_obs_steps, config.cond_dim):
        raise ValueError(
            f"cond must be [B={batch}, {config.n_obs_steps}, {config.cond_dim}], "
            f"got {tuple(cond.shape)}"
        )
