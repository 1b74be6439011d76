"""Backbone factory: one backbone config -> one `nn.Module` with `forward(sample, r, t, cond)`."""

from __future__ import annotations

from torch import nn

from vla_imf.attnres import AttnResBackbone, AttnResSubLayer
from vla_imf.backbone_config import AttnResBackboneConfig, BackboneConfig, VanillaBackboneConfig
from vla_imf.vanilla import DecoderLayer, EncoderLayer, VanillaBackbone

Backbone = VanillaBackbone | AttnResBackbone

# The units `vla_core.checkpointing.apply_activation_checkpointing` wraps, per backbone kind.
CHECKPOINT_LAYER_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "vanilla": (DecoderLayer, EncoderLayer),
    "attnres_full": (AttnResSubLayer,),
    "attnres_block": (AttnResSubLayer,),
}


def build_backbone(config: BackboneConfig) -> Backbone:
    if isinstance(config, VanillaBackboneConfig):
        return VanillaBackbone(config)
    if isinstance(config, AttnResBackboneConfig):
        return AttnResBackbone(config)
    raise TypeError(
        f"no backbone for {type(config).__name__}: pass a VanillaBackboneConfig or an "
        "AttnResBackboneConfig"
    )
