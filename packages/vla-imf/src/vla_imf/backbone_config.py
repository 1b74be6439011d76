"""One frozen, validated config per backbone kind: `VanillaBackboneConfig` (`kind="vanilla"`) and
`AttnResBackboneConfig` (`kind="attnres_full"` or `"attnres_block"`), on a common `BackboneConfig`.

Each config carries only its own kind's fields, so a field of another kind cannot be set and then
silently ignored: the constructors reject it (TypeError naming it) and `BackboneConfig.from_dict`
(JSON / Hydra) raises a ValueError naming the field and the kinds it belongs to.

`input_dim`, `output_dim`, `horizon`, `n_obs_steps` and `cond_dim` are the task's shape
(`TASK_SHAPE_FIELDS`): inside an `IMFPolicyConfig` they are filled in from the policy's fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from vla_core.attention import validate_attention_implementation

__all__ = [
    "BACKBONES",
    "BACKBONE_CONFIGS",
    "TASK_SHAPE_FIELDS",
    "AttnResBackboneConfig",
    "BackboneConfig",
    "BackboneKind",
    "VanillaBackboneConfig",
    "backbone_fields",
]

BackboneKind = Literal["vanilla", "attnres_full", "attnres_block"]
BACKBONES: tuple[str, ...] = ("vanilla", "attnres_full", "attnres_block")
ATTNRES_KINDS: tuple[str, ...] = ("attnres_full", "attnres_block")
TASK_SHAPE_FIELDS: tuple[str, ...] = (
    "input_dim",
    "output_dim",
    "horizon",
    "n_obs_steps",
    "cond_dim",
)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class BackboneConfig:
    """Fields every `u_θ(sample, r, t, cond)` backbone has; build a kind's subclass (or use
    `BackboneConfig.from_dict`), not this base. `n_layer` counts transformer blocks;
    `action_patch` consecutive action steps share one token (ViT-style patches along time)."""

    kind: BackboneKind = "attnres_full"
    input_dim: int = 2
    output_dim: int = 2
    horizon: int = 16
    n_obs_steps: int = 2
    cond_dim: int = 64
    n_layer: int = 12
    n_head: int = 4
    n_emb: int = 256
    p_drop_emb: float = 0.0
    p_drop_attn: float = 0.1
    eps: float = 1e-6
    time_scale: float = 1.0
    attention_implementation: str = "sdpa"
    action_patch: int = 1

    def __post_init__(self) -> None:
        _require(
            type(self) is not BackboneConfig,
            "BackboneConfig is the common base: build VanillaBackboneConfig or "
            "AttnResBackboneConfig, or BackboneConfig.from_dict({'kind': ..., ...})",
        )
        _require(self.kind in BACKBONES, f"kind must be one of {BACKBONES}, got {self.kind!r}")
        for name in (*TASK_SHAPE_FIELDS, "n_layer", "n_head", "n_emb"):
            _require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        _require(
            self.n_emb % self.n_head == 0,
            f"n_emb ({self.n_emb}) must be divisible by n_head ({self.n_head})",
        )
        _require(
            self.n_emb % 2 == 0, f"n_emb must be even (sinusoidal embedding), got {self.n_emb}"
        )
        for name in ("p_drop_emb", "p_drop_attn"):
            value = getattr(self, name)
            _require(0.0 <= value < 1.0, f"{name} must be in [0, 1), got {value}")
        _require(self.time_scale > 0, f"time_scale must be > 0, got {self.time_scale}")
        _require(
            self.action_patch >= 1 and self.horizon % self.action_patch == 0,
            f"action_patch must be >= 1 and divide horizon ({self.horizon}), "
            f"got {self.action_patch}",
        )
        validate_attention_implementation(self.attention_implementation)

    @property
    def n_cond_tokens(self) -> int:
        """The r token, the t token and one token per observation step."""
        return 2 + self.n_obs_steps

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "backbone") -> BackboneConfig:
        """The config of `data["kind"]` (default `attnres_full`) from its fields. A field of
        another kind, or of none, raises a ValueError naming `where.<field>`."""
        kind = data.get("kind", "attnres_full")
        if kind not in BACKBONE_CONFIGS:
            raise ValueError(f"{where}.kind must be one of {BACKBONES}, got {kind!r}")
        target = BACKBONE_CONFIGS[kind]
        own = backbone_fields(target)
        for key in data:
            if key in own:
                continue
            owners = [k for k, c in BACKBONE_CONFIGS.items() if key in backbone_fields(c)]
            if owners:
                raise ValueError(
                    f"{where}.{key} applies to backbone kind(s) {owners} only, not "
                    f"kind={kind!r}; remove it"
                )
            raise ValueError(f"unknown key {where}.{key}; kind={kind!r} takes {sorted(own)}")
        return target(**dict(data))


@dataclass(frozen=True)
class VanillaBackboneConfig(BackboneConfig):
    """The diffusion_policy transformer (`vla_imf.vanilla`): `causal_attn` masks future action
    tokens, `n_cond_layers > 0` adds a condition encoder of that many layers (else an MLP)."""

    kind: BackboneKind = "vanilla"
    causal_attn: bool = False
    n_cond_layers: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            self.kind == "vanilla",
            f"VanillaBackboneConfig.kind must be 'vanilla', got {self.kind!r}",
        )
        _require(self.n_cond_layers >= 0, f"n_cond_layers must be >= 0, got {self.n_cond_layers}")
        _require(
            not (self.causal_attn and self.action_patch > 1),
            f"causal_attn masks per action step; it needs action_patch=1, got {self.action_patch}",
        )


@dataclass(frozen=True)
class AttnResBackboneConfig(BackboneConfig):
    """The Attention-Residual transformer (`vla_imf.attnres`): GQA with `n_kv_head` key/value
    heads + RoPE (`rope_theta`) + SwiGLU (`ffn_mult`). An AttnRes block is two sublayers, so
    `attnres_block_size` (sublayers per Block-AttnRes block, `kind="attnres_block"` only) ranges
    over 1..2·n_layer."""

    kind: BackboneKind = "attnres_full"
    n_kv_head: int = 1
    ffn_mult: float = 2.667
    rope_theta: float = 10000.0
    attnres_block_size: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            self.kind in ATTNRES_KINDS,
            f"AttnResBackboneConfig.kind must be one of {ATTNRES_KINDS}, got {self.kind!r}",
        )
        _require(self.n_kv_head >= 1, f"n_kv_head must be >= 1, got {self.n_kv_head}")
        _require(
            self.n_head % self.n_kv_head == 0,
            f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})",
        )
        _require(
            (self.n_emb // self.n_head) % 2 == 0,
            f"head dim n_emb/n_head = {self.n_emb // self.n_head} must be even for RoPE",
        )
        _require(
            self.kind != "attnres_block" or 1 <= self.attnres_block_size <= 2 * self.n_layer,
            f"attnres_block_size must be in [1, 2*n_layer={2 * self.n_layer}], "
            f"got {self.attnres_block_size}",
        )
        _require(self.ffn_mult > 0, f"ffn_mult must be > 0, got {self.ffn_mult}")


#: `kind` -> its config class.
BACKBONE_CONFIGS: dict[str, type[BackboneConfig]] = {
    "vanilla": VanillaBackboneConfig,
    "attnres_full": AttnResBackboneConfig,
    "attnres_block": AttnResBackboneConfig,
}


def backbone_fields(cls: type[BackboneConfig]) -> frozenset[str]:
    """The field names of a backbone config class."""
    return frozenset(f.name for f in dataclasses.fields(cls))
