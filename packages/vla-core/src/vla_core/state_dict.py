"""State dicts: our safetensors + JSON format, and rename maps to openpi / lerobot / transformers.

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

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from vla_core.config import PI0Config
from vla_core.pi0 import PI0Model

__all__ = [
    "CONFIG_FILE",
    "LAYOUTS",
    "WEIGHTS_FILE",
    "ConvertedStateDict",
    "StateDictMismatchError",
    "convert_state_dict",
    "export_state_dict",
    "load_config",
    "load_pretrained",
    "load_state_dict",
    "rename_map",
    "save_config",
    "save_pretrained",
    "transformers_pi0_config",
    "unused_reference_keys",
]

Layout = Literal["vla", "openpi", "lerobot", "transformers"]
LAYOUTS: tuple[str, ...] = ("vla", "openpi", "lerobot", "transformers")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_NAME = "vla-core/pi0"
FORMAT_VERSION = 1

# ---- our own (vla) names ---------------------------------------------------------------------
# Top-level submodule names of `vla_core.pi0.PI0Model`.
_VLA_VISION = "vision_tower"
_VLA_PROJECTOR = "multi_modal_projector"
_VLA_EMBED = "embed_tokens"
_VLA_ENGINE = "engine"
_VLA_FILTER = "image_token_filter."  # an nn.Module filter's own state (vla layout only)

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


def _norm_params(adaptive: bool) -> tuple[str, ...]:
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
        table[f"{_VLA_VISION}.{name}"] = f"{vlm}.vision_tower.vision_model.{name}"
    for p in ("weight", "bias"):
        table[f"{_VLA_PROJECTOR}.{p}"] = f"{vlm}.multi_modal_projector.linear.{p}"
    table[f"{_VLA_EMBED}.weight"] = f"{vlm}.language_model.embed_tokens.weight"

    adaptive = config.is_pi05
    for i in range(config.backbone.depth):
        for stream, ref, ada in (
            ("backbone", f"{vlm}.language_model.layers.{i}", False),
            ("expert", f"{pwe}.gemma_expert.model.layers.{i}", adaptive),
        ):
            ours = f"{_VLA_ENGINE}.layers.{i}.{stream}"
            for norm in ("input_layernorm", "post_attention_layernorm"):
                for p in _norm_params(ada):
                    table[f"{ours}.{norm}.{p}"] = f"{ref}.{norm}.{p}"
            for p in _GEMMA_BLOCK_LINEARS:
                table[f"{ours}.{p}"] = f"{ref}.{p}"
    table[f"{_VLA_ENGINE}.backbone_norm.weight"] = f"{vlm}.language_model.norm.weight"
    for p in _norm_params(adaptive):
        table[f"{_VLA_ENGINE}.expert_norm.{p}"] = f"{pwe}.gemma_expert.model.norm.{p}"

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


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown state-dict layout {layout!r}; known: {LAYOUTS}")


def rename_map(config: PI0Config, layout: str) -> dict[str, str]:
    """The explicit table `vla key -> <layout> key` for a model built from `config`.

    `vla` is the identity. `transformers` exists for pi0 only (transformers has no pi0.5). A
    Gemma-3 engine (`vla_core.gemma3`) has only the `vla` layout (no reference project stores one
    in these layouts); its table lists the keys of the model built on the meta device.
    """
    _check_layout(layout)
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


def _tied_lm_head(layout: str) -> str | None:
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
    _check_layout(layout)
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


@dataclass
class ConvertedStateDict:
    """A vla-layout state dict plus what the conversion dropped (by name)."""

    tensors: dict[str, Tensor]
    dropped: list[str] = field(default_factory=list)
    aliased: list[str] = field(default_factory=list)  # keys read under the other SigLIP spelling


def _siglip_alias(key: str, layout: str) -> str | None:
    """The canonical spelling of a SigLIP key written with the other transformers version's
    naming (`vision_tower.vision_model.x` <-> `vision_tower.x`), or None."""
    if layout in ("openpi", "lerobot"):
        if ".vision_tower." in key and ".vision_tower.vision_model." not in key:
            return key.replace(".vision_tower.", ".vision_tower.vision_model.", 1)
    elif layout == "transformers" and key.startswith("model.vlm.vision_tower.vision_model."):
        return key.replace("vision_tower.vision_model.", "vision_tower.", 1)
    return None


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
    tied = _tied_lm_head(layout)
    embed_ref = table[f"{_VLA_EMBED}.weight"]

    tensors: dict[str, Tensor] = {}
    dropped: list[str] = []
    aliased: list[str] = []
    unexpected: list[str] = []
    for key, value in state_dict.items():
        alias = _siglip_alias(key, layout)
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
        embed_key = f"{_VLA_EMBED}.weight"
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
    filter_state = {k: v for k, v in source.items() if k.startswith(_VLA_FILTER)}
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
    tied = _tied_lm_head(layout)
    if tied is not None:
        out[tied] = source[f"{_VLA_EMBED}.weight"]
    if include_unused:
        reference = source[f"{_VLA_ENGINE}.expert_norm." + _norm_params(config.is_pi05)[0]]
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
        filter_state = {k: v for k, v in state_dict.items() if k.startswith(_VLA_FILTER)}
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


# ---- files -----------------------------------------------------------------------------------


def save_config(config: PI0Config, path: str | os.PathLike[str]) -> None:
    """Write `config` as JSON (atomically: temp file + rename)."""
    payload = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": config.to_dict()}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def load_config(path: str | os.PathLike[str]) -> PI0Config:
    """Read a config written by `save_config` (a directory means its `config.json`)."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    payload = json.loads(path.read_text())
    if payload.get("format") != FORMAT_NAME or "config" not in payload:
        raise ValueError(
            f"{path} is not a vla-core config (expected format {FORMAT_NAME!r}, "
            f"got {payload.get('format')!r})"
        )
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: unsupported format_version {payload.get('format_version')!r} "
            f"(this vla-core reads {FORMAT_VERSION})"
        )
    return PI0Config.from_dict(payload["config"])


def save_pretrained(model: nn.Module, directory: str | os.PathLike[str]) -> Path:
    """Write `model.safetensors` (vla layout) + `config.json` into `directory`, atomically.

    Both files are written into a temporary sibling directory which then replaces `directory`
    (an existing one is moved aside first and removed after the swap), so a reader never sees a
    half-written checkpoint.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, PI0Config):
        raise ValueError("save_pretrained needs a model with a PI0Config `.config`")
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in export_state_dict(model).items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "layout": "vla"})
        save_config(config, tmp / CONFIG_FILE)
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex}")
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_pretrained(
    directory: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    image_token_filter: Any = None,
    **config_overrides: Any,
) -> nn.Module:
    """Build a `PI0Model` from `config.json` and load `model.safetensors` strictly.

    `config_overrides` replace config fields first (e.g. `attention_implementation="eager"`).
    `image_token_filter` is attached before loading (needed when the checkpoint holds the state
    of a learned filter module; the JSON config does not describe filters).
    The model is built without running weight initialisers (transformers' `no_init_weights`),
    since the strict load overwrites every parameter; non-persistent buffers are built normally.
    """
    from transformers.initialization import no_init_weights  # lazy: heavy import

    directory = Path(directory)
    config = load_config(directory / CONFIG_FILE)
    if config_overrides:
        config = config.replace(**config_overrides)
    tensors = load_file(str(directory / WEIGHTS_FILE), device=str(device))
    with torch.device(device), no_init_weights():
        model = PI0Model(config, image_token_filter=image_token_filter)
    load_state_dict(model, tensors, "vla", strict=True)
    return model
