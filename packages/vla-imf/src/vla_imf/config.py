"""Frozen, validated configs: the iMF objective, the backbones and the policy.

Configuration lives apart from modelling (lerobot style) so a config can be built, validated and
serialised (`dataclasses.asdict`) without constructing a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from vla_core.attention import validate_attention_implementation

BackboneKind = Literal["vanilla", "attnres_full", "attnres_block"]
ObjectiveKind = Literal["imf", "flow_matching"]
TangentSource = Literal["boundary", "v_head"]

BACKBONES: tuple[str, ...] = ("vanilla", "attnres_full", "attnres_block")
OBJECTIVES: tuple[str, ...] = ("imf", "flow_matching")
TANGENT_SOURCES: tuple[str, ...] = ("boundary", "v_head")

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
class BackboneConfig:
    """Arguments of the `u_θ(sample, r, t, cond)` networks.

    `n_layer` counts transformer blocks; an AttnRes block is two sublayers (GQA + SwiGLU), so
    `attnres_block_size` (sublayers per Block-AttnRes block) ranges over 1..2·n_layer.
    `causal_attn` and `n_cond_layers` apply to `vanilla` only; `n_kv_head`, `ffn_mult`,
    `rope_theta` and `attnres_block_size` to the AttnRes backbones only.
    """

    kind: BackboneKind = "attnres_full"
    input_dim: int = 2
    output_dim: int = 2
    horizon: int = 16
    n_obs_steps: int = 2
    cond_dim: int = 64
    n_layer: int = 12
    n_head: int = 4
    n_kv_head: int = 1
    n_emb: int = 256
    p_drop_emb: float = 0.0
    p_drop_attn: float = 0.1
    causal_attn: bool = False
    n_cond_layers: int = 0
    ffn_mult: float = 2.667
    eps: float = 1e-6
    rope_theta: float = 10000.0
    attnres_block_size: int = 4
    time_scale: float = 1.0
    attention_implementation: str = "sdpa"
    action_patch: int = 1

    def __post_init__(self) -> None:
        _require(self.kind in BACKBONES, f"kind must be one of {BACKBONES}, got {self.kind!r}")
        for name in ("input_dim", "output_dim", "horizon", "n_obs_steps", "cond_dim"):
            _require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_layer", "n_head", "n_kv_head", "n_emb"):
            _require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        _require(
            self.n_emb % self.n_head == 0,
            f"n_emb ({self.n_emb}) must be divisible by n_head ({self.n_head})",
        )
        _require(
            self.n_emb % 2 == 0, f"n_emb must be even (sinusoidal embedding), got {self.n_emb}"
        )
        if self.kind != "vanilla":
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
        for name in ("p_drop_emb", "p_drop_attn"):
            value = getattr(self, name)
            _require(0.0 <= value < 1.0, f"{name} must be in [0, 1), got {value}")
        _require(
            self.action_patch >= 1 and self.horizon % self.action_patch == 0,
            f"action_patch must be >= 1 and divide horizon ({self.horizon}), "
            f"got {self.action_patch}",
        )
        _require(
            self.action_patch == 1 or self.kind != "vanilla",
            "action_patch > 1 applies to the AttnRes backbones only",
        )
        _require(self.n_cond_layers >= 0, f"n_cond_layers must be >= 0, got {self.n_cond_layers}")
        _require(self.ffn_mult > 0, f"ffn_mult must be > 0, got {self.ffn_mult}")
        _require(self.time_scale > 0, f"time_scale must be > 0, got {self.time_scale}")
        validate_attention_implementation(self.attention_implementation)

    @property
    def n_cond_tokens(self) -> int:
        """The r token, the t token and one token per observation step."""
        return 2 + self.n_obs_steps


@dataclass(frozen=True)
class IMFPolicyConfig:
    """Everything needed to build an `IMFPolicy`; validated at construction.

    Windows follow diffusion_policy: the action window starts at the first observation step and
    the executed actions are `action_pred[:, n_obs_steps-1 : n_obs_steps-1+n_action_steps]`.
    `num_inference_steps=None` resolves to 1 for iMF and 10 for flow matching.
    """

    backbone: BackboneKind = "attnres_full"
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
    image_feature_dim: int = 64
    n_keypoints: int = 32
    n_emb: int = 256
    n_layer: int = 12
    n_head: int = 4
    n_kv_head: int = 1
    p_drop_emb: float = 0.0
    p_drop_attn: float = 0.1
    causal_attn: bool = False
    n_cond_layers: int = 0
    ffn_mult: float = 2.667
    rope_theta: float = 10000.0
    attnres_block_size: int = 4
    time_scale: float = 1.0
    tangent_source: TangentSource = "boundary"
    objective_config: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    num_inference_steps: int | None = None
    attention_implementation: str = "sdpa"
    action_patch: int = 1
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        _require(
            self.backbone in BACKBONES,
            f"backbone must be one of {BACKBONES}, got {self.backbone!r}",
        )
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
        # Validates the backbone fields eagerly (raises on a bad combination).
        self.backbone_config()

    @property
    def cond_dim(self) -> int:
        """Per-observation-step feature size fed to the backbone."""
        lowdim = self.lowdim_feature_dim if self.lowdim_keys else 0
        return lowdim + self.image_feature_dim * len(self.image_keys)

    def backbone_config(self) -> BackboneConfig:
        return BackboneConfig(
            kind=self.backbone,
            input_dim=self.action_dim,
            output_dim=self.action_dim,
            horizon=self.horizon,
            n_obs_steps=self.n_obs_steps,
            cond_dim=self.cond_dim,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_kv_head=self.n_kv_head,
            n_emb=self.n_emb,
            p_drop_emb=self.p_drop_emb,
            p_drop_attn=self.p_drop_attn,
            causal_attn=self.causal_attn,
            n_cond_layers=self.n_cond_layers,
            ffn_mult=self.ffn_mult,
            rope_theta=self.rope_theta,
            attnres_block_size=self.attnres_block_size,
            time_scale=self.time_scale,
            attention_implementation=self.attention_implementation,
            action_patch=self.action_patch,
        )
