"""Rename tables between our (`vla`) state-dict keys and the reference projects' layouts.

Every map is an explicit, per-key table built from the config (`rename_map(config, layout)`:
vla key -> reference key), so a conversion is a dictionary lookup and every key that is not in the
table is reported by name. Key names come from the real projects:

- `openpi`: `PI0Pytorch.state_dict()` (openpi `src/openpi/models_pytorch/pi0_pytorch.py` +
  `gemma_pytorch.py`, transformers 4.53): `paligemma_with_expert.paligemma.model.{vision_tower.
  vision_model, multi_modal_projector, language_model}.*`, `paligemma_with_expert.gemma_expert.
  model.*`, and the projections at top level.
- `lerobot`: lerobot 0.6.1 `PI0Policy` / `PI05Policy` — the openpi names under `model.`.
- `transformers`: `PI0ForConditionalGeneration` (transformers >= 5.24): `model.vlm.*`,
  `model.dit.*`, `embed_action_time.*`, `action_out_proj.*` (pi0 only; no pi0.5 there).

Keys that exist in a reference but not in our model are dropped *by name* and reported
(`ConvertedStateDict.dropped`), never silently:
- the expert's `lm_head.weight` (openpi / lerobot; 263 M random parameters, unused);
- transformers' `model.dit.embed_tokens.weight` (a stock GemmaModel's embedding, unused);
- `paligemma.lm_head.weight`, tied to the token embedding: accepted as the embedding when the
  embedding itself is absent (what `safetensors.torch.save_model` keeps for tied tensors). When
  both are present, `openpi` requires them equal (refusing to pick one), while `lerobot` takes
  `embed_tokens` and ignores the saved lm_head: in lerobot 0.6.1 the two are separate
  parameters, the lm_head never gets a gradient (pi0/pi0.5 predict no tokens), so every
  checkpoint saved after training differs there, and lerobot's own loader
  (`PI05Policy._fix_pytorch_state_dict_keys`, keys in file order) ends up with `embed_tokens`.
No layout fuses q/k/v or gate/up, so every tensor maps one to one without reshaping.

SigLIP naming moved between transformers versions: openpi (4.53) and the hub checkpoints say
`vision_tower.vision_model.<x>`, transformers 5.24 says `vision_tower.<x>`. Export writes the form
each layout's reference uses (above); load accepts the other spelling too, as a reported alias.
"""

from __future__ import annotations

from typing import Literal

import torch

from vla_core.config import PI0Config
from vla_core.pi0 import PI0Model

__all__ = [
    "LAYOUTS",
    "Layout",
    "check_layout",
    "norm_params",
    "rename_map",
    "siglip_alias",
    "tied_lm_head",
    "unused_reference_keys",
]

Layout = Literal["vla", "openpi", "lerobot", "transformers"]
LAYOUTS: tuple[str, ...] = ("vla", "openpi", "lerobot", "transformers")
# ---- our own (vla) names ---------------------------------------------------------------------
# Top-level submodule names of `vla_core.pi0.PI0Model`.
VLA_VISION = "vision_tower"
VLA_PROJECTOR = "multi_modal_projector"
VLA_EMBED = "embed_tokens"
VLA_ENGINE = "engine"
VLA_FILTER = "image_token_filter."  # an nn.Module filter's own state (vla layout only)

_GEMMA_BLOCK_LINEARS = (
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)
_SIGLIP_LAYER = tuple(
    f"{module}.{param}"
    for module in (
        "layer_norm1",
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.out_proj",
        "layer_norm2",
        "mlp.fc1",
        "mlp.fc2",
    )
    for param in ("weight", "bias")
)


def norm_params(adaptive: bool) -> tuple[str, ...]:
    return ("dense.weight", "dense.bias") if adaptive else ("weight",)


def _projection_names(config: PI0Config) -> tuple[str, ...]:
    if config.is_pi05:
        return ("action_in_proj", "action_out_proj", "time_mlp_in", "time_mlp_out")
    return (
        "action_in_proj",
        "action_out_proj",
        "state_proj",
        "action_time_mlp_in",
        "action_time_mlp_out",
    )


def _vla_to_openpi(config: PI0Config) -> dict[str, str]:
    """vla key -> openpi `PI0Pytorch` key, in our state-dict order."""
    pwe = "paligemma_with_expert"
    vlm = f"{pwe}.paligemma.model"
    table: dict[str, str] = {}

    # SigLIP: our names are transformers' own, under openpi's `vision_tower.vision_model.`.
    vision = [
        "embeddings.patch_embedding.weight",
        "embeddings.patch_embedding.bias",
        "embeddings.position_embedding.weight",
    ]
    vision += [f"encoder.layers.{j}.{p}" for j in range(config.vision.depth) for p in _SIGLIP_LAYER]
    vision += ["post_layernorm.weight", "post_layernorm.bias"]
    for name in vision:
        table[f"{VLA_VISION}.{name}"] = f"{vlm}.vision_tower.vision_model.{name}"
    for p in ("weight", "bias"):
        table[f"{VLA_PROJECTOR}.{p}"] = f"{vlm}.multi_modal_projector.linear.{p}"
    table[f"{VLA_EMBED}.weight"] = f"{vlm}.language_model.embed_tokens.weight"

    adaptive = config.is_pi05
    for i in range(config.backbone.depth):
        for stream, ref, ada in (
            ("backbone", f"{vlm}.language_model.layers.{i}", False),
            ("expert", f"{pwe}.gemma_expert.model.layers.{i}", adaptive),
        ):
            ours = f"{VLA_ENGINE}.layers.{i}.{stream}"
            for norm in ("input_layernorm", "post_attention_layernorm"):
                for p in norm_params(ada):
                    table[f"{ours}.{norm}.{p}"] = f"{ref}.{norm}.{p}"
            for p in _GEMMA_BLOCK_LINEARS:
                table[f"{ours}.{p}"] = f"{ref}.{p}"
    table[f"{VLA_ENGINE}.backbone_norm.weight"] = f"{vlm}.language_model.norm.weight"
    for p in norm_params(adaptive):
        table[f"{VLA_ENGINE}.expert_norm.{p}"] = f"{pwe}.gemma_expert.model.norm.{p}"

    for name in _projection_names(config):
        for p in ("weight", "bias"):
            table[f"{name}.{p}"] = f"{name}.{p}"
    return table


def _openpi_to_transformers(key: str) -> str:
    """openpi key -> transformers `PI0ForConditionalGeneration` key (pi0)."""
    renames = (
        (
            "paligemma_with_expert.paligemma.model.vision_tower.vision_model.",
            "model.vlm.vision_tower.",
        ),
        ("paligemma_with_expert.paligemma.model.", "model.vlm."),
        ("paligemma_with_expert.gemma_expert.model.", "model.dit."),
        ("state_proj.", "embed_action_time.state_proj."),
        ("action_in_proj.", "embed_action_time.action_in_proj."),
        ("action_time_mlp_in.", "embed_action_time.action_time_mlp_in."),
        ("action_time_mlp_out.", "embed_action_time.action_time_mlp_out."),
    )
    for old, new in renames:
        if key.startswith(old):
            return new + key[len(old) :]
    return key  # action_out_proj.*


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown state-dict layout {layout!r}; known: {LAYOUTS}")


def rename_map(config: PI0Config, layout: str) -> dict[str, str]:
    """The explicit table `vla key -> <layout> key` for a model built from `config`.

    `vla` is the identity. `transformers` exists for pi0 only (transformers has no pi0.5). A
    Gemma-3 engine (`vla_core.gemma3`) has only the `vla` layout (no reference project stores one
    in these layouts); its table lists the keys of the model built on the meta device.
    """
    check_layout(layout)
    if config.engine.family == "gemma3":
        if layout != "vla":
            raise ValueError(
                f"the {layout!r} layout exists for PaliGemma (Gemma) pi0 / pi0.5 only; a Gemma-3 "
                "backbone (vla_core.gemma3) has only the 'vla' layout"
            )
        return {k: k for k in _built_model_keys(config)}
    table = _vla_to_openpi(config)
    if layout == "vla":
        return {k: k for k in table}
    if layout == "openpi":
        return table
    if layout == "lerobot":
        return {k: f"model.{v}" for k, v in table.items()}
    if config.is_pi05:
        raise ValueError(
            "transformers' PI0ForConditionalGeneration implements pi0 only; no pi0.5 layout"
        )
    return {k: _openpi_to_transformers(v) for k, v in table.items()}


def _built_model_keys(config: PI0Config) -> list[str]:
    """State-dict keys of `PI0Model(config)`, built on the meta device (no memory)."""
    with torch.device("meta"):
        return list(PI0Model(config).state_dict())


def tied_lm_head(layout: str) -> str | None:
    """The reference key tied to the token embedding (its lm_head), if that layout has one."""
    if layout == "openpi":
        return "paligemma_with_expert.paligemma.lm_head.weight"
    if layout == "lerobot":
        return "model.paligemma_with_expert.paligemma.lm_head.weight"
    return None


def unused_reference_keys(config: PI0Config, layout: str) -> dict[str, tuple[int, ...]]:
    """Keys a reference model has but never uses and ours does not have -> their shapes.

    Dropped by name when converting to vla; synthesised (zeros) by `export_state_dict(...,
    include_unused=True)` so a strict load into the reference model succeeds.
    """
    check_layout(layout)
    ex = config.expert
    if layout in ("openpi", "lerobot"):
        prefix = "model." if layout == "lerobot" else ""
        return {
            f"{prefix}paligemma_with_expert.gemma_expert.lm_head.weight": (ex.vocab_size, ex.width)
        }
    if layout == "transformers":
        # The stock GemmaModel of the expert gets the PaliGemma vocabulary (PI0Config.__post_init__).
        return {"model.dit.embed_tokens.weight": (config.backbone.vocab_size, ex.width)}
    return {}


def siglip_alias(key: str, layout: str) -> str | None:
    """The canonical spelling of a SigLIP key written with the other transformers version's
    naming (`vision_tower.vision_model.x` <-> `vision_tower.x`), or None."""
    if layout in ("openpi", "lerobot"):
        if ".vision_tower." in key and ".vision_tower.vision_model." not in key:
            return key.replace(".vision_tower.", ".vision_tower.vision_model.", 1)
    elif layout == "transformers" and key.startswith("model.vlm.vision_tower.vision_model."):
        return key.replace("vision_tower.vision_model.", "vision_tower.", 1)
    return None
