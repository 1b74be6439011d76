"""Frozen configuration dataclasses for the pi0 / pi0.5 engine, validated where they are built.

Layout follows openpi's `Pi0Config` + `gemma.get_config` (see ../shared/reference/openpi-and-lora.md
§2): a Gemma backbone and a Gemma action expert that share heads / kv heads / head_dim / depth, a
SigLIP vision tower, and the policy-level fields of pi0 / pi0.5.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from vla_core.attention import validate_attention_implementation

__all__ = [
    "DTYPES",
    "GEMMA_PRESETS",
    "SIGLIP_PRESETS",
    "VARIANTS",
    "GemmaConfig",
    "JointEngineConfig",
    "PI0Config",
    "SiglipConfig",
    "gemma_config",
    "siglip_config",
]

DTYPES = ("float32", "bfloat16")
VARIANTS = ("pi0", "pi05")
PALIGEMMA_VOCAB_SIZE = 257_152


def _require_positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class GemmaConfig:
    """One Gemma stack (backbone or action expert). `vocab_size` only matters for the backbone's
    token embedding (and for counting the expert lm_head that the runnable model never allocates)."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int = PALIGEMMA_VOCAB_SIZE
    rms_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        _require_positive(
            "GemmaConfig",
            width=self.width,
            depth=self.depth,
            mlp_dim=self.mlp_dim,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            vocab_size=self.vocab_size,
        )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"GemmaConfig.num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"GemmaConfig.head_dim must be even for RoPE, got {self.head_dim}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"GemmaConfig.rms_norm_eps must be > 0, got {self.rms_norm_eps}")


@dataclass(frozen=True)
class SiglipConfig:
    """SigLIP ViT vision tower (big_vision So400m/14 by default: 224² → 256 tokens)."""

    width: int = 1152
    depth: int = 27
    mlp_dim: int = 4304
    num_heads: int = 16
    patch_size: int = 14
    image_size: int = 224
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        _require_positive(
            "SiglipConfig",
            width=self.width,
            depth=self.depth,
            mlp_dim=self.mlp_dim,
            num_heads=self.num_heads,
            patch_size=self.patch_size,
            image_size=self.image_size,
        )
        if self.width % self.num_heads:
            raise ValueError(
                f"SiglipConfig.width ({self.width}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"SiglipConfig.image_size ({self.image_size}) must be a multiple of "
                f"patch_size ({self.patch_size})"
            )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


GEMMA_PRESETS: dict[str, GemmaConfig] = {
    "gemma_2b": GemmaConfig(
        width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256
    ),
    "gemma_300m": GemmaConfig(
        width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256
    ),
    # openpi's `dummy` variant.
    "gemma_dummy": GemmaConfig(
        width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16
    ),
    # Tiny presets for unit tests: N·H != D on purpose (as in the real expert), GQA 4/2 heads.
    "gemma_tiny": GemmaConfig(
        width=48, depth=2, mlp_dim=96, num_heads=4, num_kv_heads=2, head_dim=16, vocab_size=128
    ),
    "gemma_tiny_expert": GemmaConfig(
        width=32, depth=2, mlp_dim=64, num_heads=4, num_kv_heads=2, head_dim=16, vocab_size=128
    ),
}

SIGLIP_PRESETS: dict[str, SiglipConfig] = {
    "so400m_14": SiglipConfig(),
    "siglip_tiny": SiglipConfig(
        width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=14, image_size=56
    ),
}


def gemma_config(name: str) -> GemmaConfig:
    """Look up a Gemma preset by name (`gemma_2b`, `gemma_300m`, `gemma_dummy`, `gemma_tiny`...)."""
    if name not in GEMMA_PRESETS:
        raise ValueError(f"unknown Gemma preset {name!r}; known: {sorted(GEMMA_PRESETS)}")
    return GEMMA_PRESETS[name]


def siglip_config(name: str) -> SiglipConfig:
    if name not in SIGLIP_PRESETS:
        raise ValueError(f"unknown SigLIP preset {name!r}; known: {sorted(SIGLIP_PRESETS)}")
    return SIGLIP_PRESETS[name]


@dataclass(frozen=True)
class JointEngineConfig:
    """The two-stream Gemma engine: backbone (prefix) + action expert (suffix), one joint attention."""

    backbone: GemmaConfig = field(default_factory=lambda: GEMMA_PRESETS["gemma_2b"])
    expert: GemmaConfig = field(default_factory=lambda: GEMMA_PRESETS["gemma_300m"])
    attention_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    rope_max_wavelength: float = 10_000.0

    def __post_init__(self) -> None:
        validate_attention_implementation(self.attention_implementation)
        if not isinstance(self.gradient_checkpointing, bool):
            raise ValueError(
                "JointEngineConfig.gradient_checkpointing must be a bool, "
                f"got {self.gradient_checkpointing!r}"
            )
        shared = ("num_heads", "num_kv_heads", "head_dim", "depth")
        mismatched = [
            f"{name}: backbone {getattr(self.backbone, name)} != expert {getattr(self.expert, name)}"
            for name in shared
            if getattr(self.backbone, name) != getattr(self.expert, name)
        ]
        if mismatched:
            raise ValueError(
                "backbone and expert must share heads / kv heads / head_dim / depth for the joint "
                "attention; " + "; ".join(mismatched)
            )
        if not self.rope_max_wavelength > 0:
            raise ValueError(
                f"JointEngineConfig.rope_max_wavelength must be > 0, got {self.rope_max_wavelength}"
            )


@dataclass(frozen=True)
class PI0Config:
    """pi0 / pi0.5 policy configuration (defaults: full-size pi0 = PaliGemma-3B + Gemma-300M expert).

    `attention_implementation` / `gradient_checkpointing` are the policy-level knobs: left at `None`
    they keep whatever `engine` says; set, they are pushed down into `engine` (both directions, so
    the policy can also turn an engine-level `True` off). The effective values live in `engine`.
    """

    variant: Literal["pi0", "pi05"] = "pi0"
    engine: JointEngineConfig = field(default_factory=JointEngineConfig)
    vision: SiglipConfig = field(default_factory=SiglipConfig)
    action_dim: int = 32
    state_dim: int = 32
    action_horizon: int = 50
    max_token_len: int | None = None  # None -> 48 (pi0) / 200 (pi0.5), as openpi
    num_cameras: int = 3
    dtype: Literal["float32", "bfloat16"] = "float32"
    attention_implementation: str | None = None
    gradient_checkpointing: bool | None = None
    knowledge_insulation: bool = False  # pi0.5 training: detach the prefix cache (action loss)
    time_beta_alpha: float = 1.5
    time_beta_beta: float = 1.0
    time_scale: float = 0.999
    time_offset: float = 0.001
    time_min_period: float = 4e-3
    time_max_period: float = 4.0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"PI0Config.variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"PI0Config.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.max_token_len is None:
            object.__setattr__(self, "max_token_len", 200 if self.variant == "pi05" else 48)
        _require_positive(
            "PI0Config",
            action_dim=self.action_dim,
            state_dim=self.state_dim,
            action_horizon=self.action_horizon,
            max_token_len=self.max_token_len,  # type: ignore[arg-type]
            num_cameras=self.num_cameras,
        )
        if self.knowledge_insulation and self.variant != "pi05":
            raise ValueError("PI0Config.knowledge_insulation is a pi0.5 option (variant='pi05')")
        if not (self.time_beta_alpha > 0 and self.time_beta_beta > 0):
            raise ValueError("PI0Config.time_beta_alpha / time_beta_beta must be > 0")
        if not 0 < self.time_min_period < self.time_max_period:
            raise ValueError("PI0Config needs 0 < time_min_period < time_max_period")
        # Policy-level knobs push down into the engine; unset ones take the engine's value.
        engine = self.engine
        if self.attention_implementation is not None:
            validate_attention_implementation(self.attention_implementation)
            engine = dataclasses.replace(
                engine, attention_implementation=self.attention_implementation
            )
        if self.gradient_checkpointing is not None:
            if not isinstance(self.gradient_checkpointing, bool):
                raise ValueError(
                    "PI0Config.gradient_checkpointing must be a bool or None, "
                    f"got {self.gradient_checkpointing!r}"
                )
            engine = dataclasses.replace(engine, gradient_checkpointing=self.gradient_checkpointing)
        object.__setattr__(self, "engine", engine)

    # ---- convenience views -------------------------------------------------------------------
    @property
    def backbone(self) -> GemmaConfig:
        return self.engine.backbone

    @property
    def expert(self) -> GemmaConfig:
        return self.engine.expert

    @property
    def is_pi05(self) -> bool:
        return self.variant == "pi05"

    def replace(self, **changes: Any) -> PI0Config:
        """`dataclasses.replace` that re-runs validation (nested configs may be passed as dicts)."""
        return PI0Config.from_dict({**self.to_dict(), **_plain(changes)})

    # ---- JSON round trip ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PI0Config:
        """Inverse of `to_dict`; unknown keys raise (naming them) instead of being dropped."""
        data = dict(data)
        _check_keys(cls, data, "PI0Config")
        if isinstance(data.get("engine"), dict):
            engine = dict(data["engine"])
            engine_cls, backbone_cls = _engine_classes(engine)
            _check_keys(engine_cls, engine, "PI0Config.engine")
            for stream, stream_cls in (("backbone", backbone_cls), ("expert", GemmaConfig)):
                if isinstance(engine.get(stream), dict):
                    _check_keys(stream_cls, engine[stream], f"PI0Config.engine.{stream}")
                    engine[stream] = stream_cls(**engine[stream])
            data["engine"] = engine_cls(**engine)
        if isinstance(data.get("vision"), dict):
            _check_keys(SiglipConfig, data["vision"], "PI0Config.vision")
            data["vision"] = SiglipConfig(**data["vision"])
        return cls(**data)


def _engine_classes(engine: dict[str, Any]) -> tuple[type[JointEngineConfig], type[GemmaConfig]]:
    """(engine config, backbone config) classes of an engine dict: a Gemma-3 engine
    (`vla_core.gemma3`) is the one carrying `enforce_sliding_window`."""
    if "enforce_sliding_window" in engine:
        from vla_core.gemma3 import Gemma3Config, Gemma3EngineConfig  # local: gemma3 imports us

        return Gemma3EngineConfig, Gemma3Config
    return JointEngineConfig, GemmaConfig


def _plain(changes: dict[str, Any]) -> dict[str, Any]:
    plain: dict[str, Any] = {}
    for key, value in changes.items():
        is_instance = dataclasses.is_dataclass(value) and not isinstance(value, type)
        plain[key] = dataclasses.asdict(value) if is_instance else value  # type: ignore[arg-type]
    return plain


def _check_keys(cls: type, data: dict[str, Any], owner: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown keys for {owner}: {unknown}; known: {sorted(known)}")
