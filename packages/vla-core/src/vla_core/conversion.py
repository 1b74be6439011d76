"""State-dict conversion: a reference layout's tensors into our model (`convert_state_dict`,
`load_state_dict`), ours out into a reference layout (`export_state_dict`), and the matching
transformers `PI0Config` (`transformers_pi0_config`). Key tables and the tied / unused / aliased
key rules live in `vla_core.layouts`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from vla_core.config import PI0Config
from vla_core.layouts import (
    VLA_EMBED,
    VLA_ENGINE,
    VLA_FILTER,
    norm_params,
    rename_map,
    siglip_alias,
    tied_lm_head,
    unused_reference_keys,
)

__all__ = [
    "ConvertedStateDict",
    "StateDictMismatchError",
    "convert_state_dict",
    "export_state_dict",
    "load_state_dict",
    "transformers_pi0_config",
]


class StateDictMismatchError(KeyError):
    """Missing / unexpected / wrongly shaped keys, each listed by name."""

    def __init__(
        self,
        layout: str,
        missing: Iterable[str] = (),
        unexpected: Iterable[str] = (),
        shape_mismatches: Iterable[str] = (),
    ) -> None:
        self.layout = layout
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.shape_mismatches = sorted(shape_mismatches)
        parts = [f"state dict does not match the {layout!r} layout:"]
        if self.missing:
            parts.append(f"missing keys ({len(self.missing)}): {self.missing}")
        if self.unexpected:
            parts.append(f"unexpected keys ({len(self.unexpected)}): {self.unexpected}")
        if self.shape_mismatches:
            parts.append(
                f"shape mismatches ({len(self.shape_mismatches)}): {self.shape_mismatches}"
            )
        super().__init__(" ".join(parts))

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@dataclass
class ConvertedStateDict:
    """A vla-layout state dict plus what the conversion dropped (by name)."""

    tensors: dict[str, Tensor]
    dropped: list[str] = field(default_factory=list)
    aliased: list[str] = field(default_factory=list)  # keys read under the other SigLIP spelling


def convert_state_dict(
    state_dict: Mapping[str, Tensor],
    config: PI0Config,
    layout: str,
    *,
    strict: bool = True,
) -> ConvertedStateDict:
    """Rename a `layout` state dict into ours (no model needed; shapes are not checked here).

    This is the entry point for converters: e.g. vla-convert builds an openpi-layout dict from a
    JAX checkpoint and calls `convert_state_dict(tensors, config, "openpi")`. With `strict`, any
    key that is neither mapped nor a known unused key, and any of our keys left unfilled, raises
    `StateDictMismatchError` listing them all.
    """
    table = rename_map(config, layout)
    inverse = {ref: ours for ours, ref in table.items()}
    unused = unused_reference_keys(config, layout)
    tied = tied_lm_head(layout)
    embed_ref = table[f"{VLA_EMBED}.weight"]

    tensors: dict[str, Tensor] = {}
    dropped: list[str] = []
    aliased: list[str] = []
    unexpected: list[str] = []
    for key, value in state_dict.items():
        alias = siglip_alias(key, layout)
        if key in inverse:
            tensors[inverse[key]] = value
        elif alias is not None and alias in inverse and alias not in state_dict:
            tensors[inverse[alias]] = value
            aliased.append(key)
        elif key in unused or (tied is not None and key == tied):
            dropped.append(key)
        else:
            unexpected.append(key)

    if tied is not None and tied in state_dict:
        embed_key = f"{VLA_EMBED}.weight"
        lm_head = state_dict[tied]
        if embed_key not in tensors:
            tensors[embed_key] = lm_head  # the tied copy safetensors kept
        elif layout != "lerobot" and not _same_tensor(tensors[embed_key], lm_head):
            raise ValueError(
                f"{tied!r} is tied to {embed_ref!r} in the reference model but the two tensors "
                "differ; refusing to pick one"
            )

    missing = [k for k in table if k not in tensors]
    if strict and (missing or unexpected):
        raise StateDictMismatchError(
            layout, missing=[table[k] for k in missing], unexpected=unexpected
        )
    return ConvertedStateDict(tensors=tensors, dropped=sorted(dropped), aliased=sorted(aliased))


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape:
        return False
    if a.device.type == "meta" or b.device.type == "meta":
        return True
    return bool(torch.equal(a, b.to(a.dtype)))


def export_state_dict(
    model: nn.Module | Mapping[str, Tensor],
    layout: str = "vla",
    *,
    config: PI0Config | None = None,
    include_unused: bool = False,
) -> dict[str, Tensor]:
    """Our state dict renamed into `layout` (tensors shared, not copied).

    `model` is a `PI0Model` (its `.config` is used) or a vla-layout state dict plus `config`.
    openpi / lerobot get both the token embedding and its tied `paligemma.lm_head.weight`, as
    their `state_dict()` has. `include_unused=True` adds zero tensors for the reference's unused
    keys (`unused_reference_keys`), which costs their memory (263 M values for full-size pi0).
    The tied pair shares one tensor: `safetensors.torch.save_file` refuses shared tensors, so
    write such a dict with `save_model`-style de-duplication or `.clone()` one of the two.
    """
    if isinstance(model, nn.Module):
        config = config if config is not None else getattr(model, "config", None)
        source = model.state_dict()
    else:
        source = dict(model)
    if not isinstance(config, PI0Config):
        raise ValueError("export_state_dict needs a PI0Config (pass config= with a plain dict)")
    table = rename_map(config, layout)
    filter_state = {k: v for k, v in source.items() if k.startswith(VLA_FILTER)}
    if filter_state and layout != "vla":
        raise ValueError(
            f"the {layout!r} layout has no image-token filter, but the model carries its state "
            f"{sorted(filter_state)}; detach it (model.set_image_token_filter(None)) or use 'vla'"
        )
    missing = [k for k in table if k not in source]
    unexpected = [k for k in source if k not in table and k not in filter_state]
    if missing or unexpected:
        raise StateDictMismatchError("vla", missing=missing, unexpected=unexpected)
    out = {table[k]: v for k, v in source.items() if k in table}
    out.update(filter_state)  # vla layout only (checked above)
    tied = tied_lm_head(layout)
    if tied is not None:
        out[tied] = source[f"{VLA_EMBED}.weight"]
    if include_unused:
        reference = source[f"{VLA_ENGINE}.expert_norm." + norm_params(config.is_pi05)[0]]
        for key, shape in unused_reference_keys(config, layout).items():
            out[key] = torch.zeros(shape, dtype=reference.dtype, device=reference.device)
    return out


def load_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    layout: str = "vla",
    *,
    strict: bool = True,
) -> ConvertedStateDict:
    """Load a `layout` state dict into our model (copying, with dtype cast to the parameters').

    strict: every model key filled, no unknown key, shapes equal — else `StateDictMismatchError`
    naming each offending key (reference names for missing keys of a reference layout).
    Returns the conversion report (what was dropped by name).
    """
    config = getattr(model, "config", None)
    if not isinstance(config, PI0Config):
        raise ValueError("load_state_dict needs a model with a PI0Config `.config`")
    filter_state: dict[str, Tensor] = {}
    if layout == "vla":  # a learned image-token filter's own tensors travel with our layout
        filter_state = {k: v for k, v in state_dict.items() if k.startswith(VLA_FILTER)}
        state_dict = {k: v for k, v in state_dict.items() if k not in filter_state}
    converted = convert_state_dict(state_dict, config, layout, strict=strict)
    converted.tensors.update(filter_state)
    target = model.state_dict()
    unexpected = [k for k in converted.tensors if k not in target]
    missing = [k for k in target if k not in converted.tensors]
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in converted.tensors.items()
        if k in target and tuple(v.shape) != tuple(target[k].shape)
    ]
    if shapes or (strict and (missing or unexpected)):
        raise StateDictMismatchError(layout, missing, unexpected, shapes)
    model.load_state_dict(converted.tensors, strict=strict)
    return converted


def transformers_pi0_config(config: PI0Config) -> Any:
    """transformers' `PI0Config` with the dimensions of our pi0 `config`, so that
    `PI0ForConditionalGeneration(transformers_pi0_config(c)).load_state_dict(
    export_state_dict(model, "transformers", include_unused=True))` is a strict load.

    Image placeholders use the id `vocab_size` (outside the vocabulary), as transformers' default.
    """
    from transformers import PI0Config as TransformersPI0Config

    if config.is_pi05:
        raise ValueError(
            "transformers' PI0ForConditionalGeneration implements pi0 only; no pi0.5 config"
        )
    bb, ex, vis = config.backbone, config.expert, config.vision
    rope = {"rope_theta": float(config.engine.rope_max_wavelength), "rope_type": "default"}
    text = {
        "model_type": "gemma",
        "hidden_size": bb.width,
        "num_hidden_layers": bb.depth,
        "intermediate_size": bb.mlp_dim,
        "num_attention_heads": bb.num_heads,
        "num_key_value_heads": bb.num_kv_heads,
        "head_dim": bb.head_dim,
        "vocab_size": bb.vocab_size,
        "rms_norm_eps": bb.rms_norm_eps,
        "hidden_activation": "gelu_pytorch_tanh",
        "rope_parameters": rope,
    }
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": vis.width,
        "intermediate_size": vis.mlp_dim,
        "num_hidden_layers": vis.depth,
        "num_attention_heads": vis.num_heads,
        "patch_size": vis.patch_size,
        "image_size": vis.image_size,
        "layer_norm_eps": vis.layer_norm_eps,
        "vision_use_head": False,
    }
    dit = {
        "model_type": "gemma",
        "hidden_size": ex.width,
        "num_hidden_layers": ex.depth,
        "intermediate_size": ex.mlp_dim,
        "num_attention_heads": ex.num_heads,
        "num_key_value_heads": ex.num_kv_heads,
        "head_dim": ex.head_dim,
        "rms_norm_eps": ex.rms_norm_eps,
        "hidden_activation": "gelu_pytorch_tanh",
        "rope_parameters": rope,
    }
    return TransformersPI0Config(
        vlm_config={
            "model_type": "paligemma",
            "text_config": text,
            "vision_config": vision,
            "projection_dim": bb.width,
            "image_token_id": bb.vocab_size,  # a placeholder id outside the vocabulary
        },
        dit_config=dit,
        chunk_size=config.action_horizon,
        max_state_dim=config.state_dim,
        max_action_dim=config.action_dim,
        min_period=config.time_min_period,
        max_period=config.time_max_period,
    )
