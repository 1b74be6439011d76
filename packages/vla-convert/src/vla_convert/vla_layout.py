"""The `vla` output layout: vla-core's tensor names and `PI0Config`, via vla-core's own rename map.

Names come from `vla_core.state_dict.rename_map(config, "openpi")` (vla -> openpi-PyTorch),
inverted here; the config is built from the inferred dims and written with vla-core's
`save_config`, so `vla_core.state_dict.load_pretrained(out_dir)` loads the result strictly.
Fields a checkpoint does not hold (action horizon, prompt length, cameras) take openpi's defaults
unless overridden.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla_convert.dims import GemmaDims, OpenpiDims
from vla_convert.errors import ConversionError


def _gemma(e: GemmaDims, vocab_size: int) -> Any:
    from vla_core.config import GemmaConfig

    return GemmaConfig(
        width=e.width,
        depth=e.depth,
        mlp_dim=e.mlp_dim,
        num_heads=e.num_heads,
        num_kv_heads=e.num_kv_heads,
        head_dim=e.head_dim,
        vocab_size=vocab_size,
    )


def pi0_config_from_dims(dims: OpenpiDims, dtype: str = "float32", **overrides: Any) -> Any:
    """vla-core `PI0Config` for a checkpoint with these dims; raises if vla-core cannot hold it."""
    from vla_core.config import JointEngineConfig, PI0Config, SiglipConfig

    v = dims.vision
    if v.num_heads * v.head_dim != v.width:
        raise ConversionError(
            f"SigLIP heads x head_dim = {v.num_heads} x {v.head_dim} != width {v.width}: "
            "vla-core's vision tower (transformers SigLIP) cannot represent it; use --layout openpi"
        )
    side = math.isqrt(v.num_patches)
    if side * side != v.num_patches:
        raise ConversionError(f"{v.num_patches} position embeddings is not a square patch grid")
    cond = dims.expert.adarms_cond_dim
    if cond is not None and cond != dims.expert.width:
        raise ConversionError(
            f"adaRMS condition width {cond} != expert width {dims.expert.width}: not a pi0.5 "
            "vla-core can build"
        )
    fields: dict[str, Any] = {
        "variant": "pi05" if dims.pi05 else "pi0",
        "engine": JointEngineConfig(
            backbone=_gemma(dims.paligemma, dims.vocab_size),
            expert=_gemma(dims.expert, dims.vocab_size),
        ),
        "vision": SiglipConfig(
            width=v.width,
            depth=v.depth,
            mlp_dim=v.mlp_dim,
            num_heads=v.num_heads,
            patch_size=v.patch_size,
            image_size=side * v.patch_size,
        ),
        "action_dim": dims.action_dim,
        "dtype": dtype,
    }
    if dims.state_dim is not None:
        fields["state_dim"] = dims.state_dim
    fields.update(overrides)
    return PI0Config(**fields)


@dataclass
class VlaLayout:
    config_overrides: dict[str, Any] = field(default_factory=dict)

    def rename_all(self, targets: dict[str, tuple[int, ...]], dims: OpenpiDims) -> dict[str, str]:
        from vla_core.state_dict import rename_map

        table = rename_map(pi0_config_from_dims(dims), "openpi")  # vla -> openpi
        to_vla = {ref: ours for ours, ref in table.items()}
        unmapped = [name for name in targets if name not in to_vla]
        unfilled = [ours for ours, ref in table.items() if ref not in targets]
        if unmapped or unfilled:
            raise ConversionError(
                f"vla-core's rename map disagrees with the conversion plan: openpi tensors "
                f"without a vla name {unmapped}; vla parameters never produced {unfilled}"
            )
        return {name: to_vla[name] for name in targets}

    def write_config(
        self, dims: OpenpiDims, path: Path, *, dtype: str, action_horizon: int
    ) -> None:
        from vla_core.state_dict import save_config

        overrides = {"action_horizon": action_horizon, **self.config_overrides}
        save_config(pi0_config_from_dims(dims, dtype, **overrides), path)
