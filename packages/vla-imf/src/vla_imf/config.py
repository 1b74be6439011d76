"""Frozen, validated configs: the iMF objective and the policy (the backbones' configs are in
`vla_imf.backbone_config`, one per kind; `IMFPolicyConfig.backbone` embeds one).

Configuration lives apart from modelling (lerobot style) so a config can be built, validated and
serialised (`dataclasses.asdict`, read back with `IMFPolicyConfig.from_dict`) without constructing
a model.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from vla_imf.backbone_config import (
    BACKBONE_CONFIGS,
    BACKBONES,
    TASK_SHAPE_FIELDS,
    AttnResBackboneConfig,
    BackboneConfig,
    BackboneKind,
    VanillaBackboneConfig,
    backbone_fields,
)

__all__ = [
    "BACKBONES",
    "AttnResBackboneConfig",
    "BackboneConfig",
    "BackboneKind",
    "IMFPolicyConfig",
    "ObjectiveConfig",
    "VanillaBackboneConfig",
]

ObjectiveKind = Literal["imf", "flow_matching"]
TangentSource = Literal["boundary", "v_head"]

OBJECTIVES: tuple[str, ...] = ("imf", "flow_matching")
TANGENT_SOURCES: tuple[str, ...] = ("boundary", "v_head")

#: Training knobs that vla-imf 0.1 wrote into config.json; `from_dict` reads and ignores them.
_REMOVED_TRAINING_KNOBS = ("gradient_checkpointing",)
#: Backbone fields of the flat form (vla-imf 0.1 config.json, vla-train's Hydra `policy` group):
#: every kind's fields except `kind` (the flat key is `backbone`) and the task's shape.
FLAT_BACKBONE_FIELDS: frozenset[str] = frozenset().union(
    *(backbone_fields(c) for c in BACKBONE_CONFIGS.values())
) - {"kind", *TASK_SHAPE_FIELDS}

# Feature sizes of the PushT keys (LeRobot naming), used when `lowdim_dims` is not given.
KNOWN_LOWDIM_DIMS: dict[str, int] = {
    "observation.state": 2,
    "observation.environment_state": 16,
}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class ObjectiveConfig:
    """The iMF / flow-matching training objective (time convention: t=1 noise, t=0 data).

    `boundary_fraction` is the share of each batch forced to `r = t` (the first ⌊fraction·B⌋
    rows). `adaptive_p = 0` disables the adaptive weighting `L / sg(L + c)^p`.
    """

    p_mean: float = -0.4
    p_std: float = 1.0
    boundary_fraction: float = 0.5
    adaptive_p: float = 0.0
    adaptive_c: float = 1e-2
    mask_padding: bool = True

    def __post_init__(self) -> None:
        _require(self.p_std > 0, f"p_std must be > 0, got {self.p_std}")
        _require(
            0.0 <= self.boundary_fraction <= 1.0,
            f"boundary_fraction must be in [0, 1], got {self.boundary_fraction}",
        )
        _require(self.adaptive_p >= 0, f"adaptive_p must be >= 0, got {self.adaptive_p}")
        _require(self.adaptive_c > 0, f"adaptive_c must be > 0, got {self.adaptive_c}")


@dataclass(frozen=True)
class IMFPolicyConfig:
    """Everything needed to build an `IMFPolicy`; validated at construction.

    Windows follow diffusion_policy: the action window starts at the first observation step and
    the executed actions are `action_pred[:, n_obs_steps-1 : n_obs_steps-1+n_action_steps]`.
    `num_inference_steps=None` resolves to 1 for iMF and 10 for flow matching.

    `backbone` is one kind's config (`VanillaBackboneConfig` / `AttnResBackboneConfig`, or its
    dict with a `kind`); its task-shaped fields (`input_dim`, `output_dim`, `horizon`,
    `n_obs_steps`, `cond_dim`) are filled in from this config, whatever they were. Read a
    `dataclasses.asdict` dict (config.json) back with `from_dict`, which also reads the flat
    vla-imf 0.1 form. Activation checkpointing is not a config field: apply it to the built
    model (`apply_activation_checkpointing(policy.backbone, CHECKPOINT_LAYER_TYPES[kind])`).
    """

    backbone: BackboneConfig = field(default_factory=AttnResBackboneConfig)
    objective: ObjectiveKind = "imf"
    action_dim: int = 2
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    lowdim_keys: tuple[str, ...] = ("observation.state",)
    lowdim_dims: tuple[int, ...] | None = None
    image_keys: tuple[str, ...] = ()
    image_shape: tuple[int, int, int] = (3, 96, 96)
    crop_shape: tuple[int, int] | None = (84, 84)
    lowdim_feature_dim: int = 64
    lowdim_fourier_bands: int = 0
    image_feature_dim: int = 64
    n_keypoints: int = 32
    tangent_source: TangentSource = "boundary"
    objective_config: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    num_inference_steps: int | None = None

    def __post_init__(self) -> None:
        _require(
            self.objective in OBJECTIVES,
            f"objective must be one of {OBJECTIVES}, got {self.objective!r}",
        )
        _require(
            self.tangent_source in TANGENT_SOURCES,
            f"tangent_source must be one of {TANGENT_SOURCES}, got {self.tangent_source!r}",
        )
        # Accept lists / mappings (e.g. from Hydra) and store hashable, typed values.
        object.__setattr__(self, "lowdim_keys", tuple(self.lowdim_keys))
        object.__setattr__(self, "image_keys", tuple(self.image_keys))
        if isinstance(self.objective_config, Mapping):
            object.__setattr__(self, "objective_config", ObjectiveConfig(**self.objective_config))
        _require(
            isinstance(self.objective_config, ObjectiveConfig),
            f"objective_config must be an ObjectiveConfig, got {type(self.objective_config)}",
        )
        for name in ("action_dim", "horizon", "n_obs_steps", "n_action_steps"):
            _require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        _require(
            self.n_obs_steps - 1 + self.n_action_steps <= self.horizon,
            f"n_obs_steps - 1 + n_action_steps = {self.n_obs_steps - 1 + self.n_action_steps} "
            f"exceeds horizon {self.horizon}",
        )
        _require(
            len(self.lowdim_keys) + len(self.image_keys) > 0,
            "at least one of lowdim_keys / image_keys must be non-empty",
        )
        all_keys = (*self.lowdim_keys, *self.image_keys)
        _require(len(set(all_keys)) == len(all_keys), f"duplicate observation keys: {all_keys}")
        _require("action" not in all_keys, "'action' cannot be an observation key")
        if self.lowdim_dims is None:
            unknown = [k for k in self.lowdim_keys if k not in KNOWN_LOWDIM_DIMS]
            _require(
                not unknown,
                f"lowdim_dims is required for keys without a known size: {unknown} "
                f"(known: {KNOWN_LOWDIM_DIMS})",
            )
            object.__setattr__(
                self, "lowdim_dims", tuple(KNOWN_LOWDIM_DIMS[k] for k in self.lowdim_keys)
            )
        else:
            object.__setattr__(self, "lowdim_dims", tuple(int(d) for d in self.lowdim_dims))
        assert self.lowdim_dims is not None
        _require(
            len(self.lowdim_dims) == len(self.lowdim_keys),
            f"lowdim_dims {self.lowdim_dims} must have one entry per lowdim key {self.lowdim_keys}",
        )
        _require(
            all(d >= 1 for d in self.lowdim_dims), f"lowdim_dims must be >= 1: {self.lowdim_dims}"
        )
        object.__setattr__(self, "image_shape", tuple(self.image_shape))
        _require(
            len(self.image_shape) == 3 and all(s >= 1 for s in self.image_shape),
            f"image_shape must be (C, H, W), got {self.image_shape}",
        )
        if self.crop_shape is not None:
            object.__setattr__(self, "crop_shape", tuple(self.crop_shape))
            _require(
                len(self.crop_shape) == 2
                and 1 <= self.crop_shape[0] <= self.image_shape[1]
                and 1 <= self.crop_shape[1] <= self.image_shape[2],
                f"crop_shape {self.crop_shape} must fit inside image_shape {self.image_shape}",
            )
        if self.image_keys:
            side = min(self.crop_shape or self.image_shape[1:])
            _require(
                side >= 33,
                f"image side after cropping is {side}; the ResNet-18 feature map must be at "
                "least 2x2 for spatial-softmax keypoints (side >= 33)",
            )
        _require(
            self.lowdim_fourier_bands >= 0,
            f"lowdim_fourier_bands must be >= 0, got {self.lowdim_fourier_bands}",
        )
        for name in ("lowdim_feature_dim", "image_feature_dim", "n_keypoints"):
            _require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_inference_steps is None:
            object.__setattr__(self, "num_inference_steps", 1 if self.objective == "imf" else 10)
        assert self.num_inference_steps is not None
        _require(
            self.num_inference_steps >= 1,
            f"num_inference_steps must be >= 1, got {self.num_inference_steps}",
        )
        _require(
            not (self.objective == "flow_matching" and self.tangent_source == "v_head"),
            "tangent_source='v_head' only applies to objective='imf'",
        )
        self._embed_backbone()

    def _embed_backbone(self) -> None:
        """Store `backbone` as its kind's config with this policy's task shape filled in."""
        shape = {
            "input_dim": self.action_dim,
            "output_dim": self.action_dim,
            "horizon": self.horizon,
            "n_obs_steps": self.n_obs_steps,
            "cond_dim": self.cond_dim,
        }
        backbone: Any = self.backbone
        if isinstance(backbone, Mapping):
            backbone = BackboneConfig.from_dict({**backbone, **shape})
        _require(
            isinstance(backbone, BackboneConfig) and type(backbone) is not BackboneConfig,
            "backbone must be a VanillaBackboneConfig / AttnResBackboneConfig (or its dict with "
            f"a 'kind'), got {backbone!r}",
        )
        if any(getattr(backbone, k) != v for k, v in shape.items()):
            backbone = dataclasses.replace(backbone, **shape)
        object.__setattr__(self, "backbone", backbone)

    @property
    def cond_dim(self) -> int:
        """Per-observation-step feature size fed to the backbone."""
        lowdim = self.lowdim_feature_dim if self.lowdim_keys else 0
        return lowdim + self.image_feature_dim * len(self.image_keys)

    @property
    def action_patch(self) -> int:
        """Action steps per backbone token (`backbone.action_patch`)."""
        return self.backbone.action_patch

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IMFPolicyConfig:
        """Read `dataclasses.asdict(config)` back (e.g. the `policy` entry of a vla-train
        config.json). Also reads what vla-imf 0.1 wrote, with a DeprecationWarning: the flat form
        (`backbone="attnres_full", n_emb=..., n_layer=...`, see `from_flat`) and the removed
        `gradient_checkpointing` knob (ignored)."""
        data = dict(data)
        for key in _REMOVED_TRAINING_KNOBS:
            if key in data:
                data.pop(key)
                warnings.warn(
                    f"IMFPolicyConfig.{key} is ignored: configs describe architecture only since "
                    "vla-imf 0.2; apply it to the built model instead "
                    "(vla_core.apply_activation_checkpointing(policy.backbone, "
                    "vla_imf.CHECKPOINT_LAYER_TYPES[kind]))",
                    DeprecationWarning,
                    stacklevel=2,
                )
        if isinstance(data.get("backbone"), str) or FLAT_BACKBONE_FIELDS & set(data):
            warnings.warn(
                "flat IMFPolicyConfig dict (backbone=<kind>, n_emb=..., ...) is deprecated since "
                "vla-imf 0.2: nest the backbone fields, backbone={'kind': ..., 'n_emb': ...} "
                "(what dataclasses.asdict writes)",
                DeprecationWarning,
                stacklevel=2,
            )
            return cls.from_flat(data)
        return cls._from_fields(data, where="policy")

    @classmethod
    def from_flat(cls, data: Mapping[str, Any], *, where: str = "policy") -> IMFPolicyConfig:
        """The config from the flat form: the backbone's kind as `backbone` and its fields beside
        the policy's (vla-train's Hydra `policy` group; vla-imf 0.1's config.json). A field of
        another backbone kind is dropped when it holds that field's default (0.1 wrote every
        field) and raises a ValueError naming `where.<field>` otherwise."""
        data = dict(data)
        kind = data.pop("backbone", "attnres_full")
        if not isinstance(kind, str):
            flat = sorted(FLAT_BACKBONE_FIELDS & set(data))
            raise ValueError(
                f"{where}: backbone fields {flat} beside a nested {where}.backbone; move them "
                "into the backbone's dict"
            )
        if kind not in BACKBONE_CONFIGS:
            raise ValueError(f"{where}.backbone must be one of {BACKBONES}, got {kind!r}")
        target = BACKBONE_CONFIGS[kind]
        own = backbone_fields(target)
        nested: dict[str, Any] = {"kind": kind}
        for key in sorted(FLAT_BACKBONE_FIELDS & set(data)):
            value = data.pop(key)
            if key in own:
                nested[key] = value
                continue
            owners = [k for k, c in BACKBONE_CONFIGS.items() if key in backbone_fields(c)]
            default = next(
                f.default for f in dataclasses.fields(BACKBONE_CONFIGS[owners[0]]) if f.name == key
            )
            if value != default:
                raise ValueError(
                    f"{where}.{key}={value!r} applies to backbone kind(s) {owners} only, not "
                    f"{where}.backbone={kind!r}; remove it"
                )
        return cls._from_fields({**data, "backbone": nested}, where=where)

    @classmethod
    def _from_fields(cls, data: Mapping[str, Any], *, where: str) -> IMFPolicyConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            names = ", ".join(f"{where}.{k}" for k in unknown)
            raise ValueError(f"unknown IMFPolicyConfig keys {names}; known: {sorted(known)}")
        return cls(**data)
