"""The policy config (`PI0Config`, pi0 / pi0.5) and the one place that turns a JSON dict back into
configs, dispatching on the engine's `family`. Layout follows openpi `pi0_config.Pi0Config`
(openpi `src/openpi/models/pi0_config.py`). The engine-part configs are re-exported from
`vla_core.engine_config` (Gemma) and `vla_core.gemma3_config` (Gemma-3).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from vla_core.attention import validate_attention_implementation
from vla_core.engine_config import (
    ENGINE_FAMILIES,
    GEMMA_PRESETS,
    SIGLIP_PRESETS,
    GemmaConfig,
    JointEngineConfig,
    SiglipConfig,
    gemma_config,
    require_positive,
    siglip_config,
)
from vla_core.gemma3_config import (
    GEMMA3_EXPERT_PRESETS,
    GEMMA3_PRESETS,
    SIGLIP_SO400M_448,
    Gemma3Config,
    Gemma3EngineConfig,
    gemma3_config,
    gemma3_expert_config,
)

__all__ = [
    "DTYPES",
    "ENGINE_CONFIGS",
    "GEMMA3_EXPERT_PRESETS",
    "GEMMA3_PRESETS",
    "GEMMA_PRESETS",
    "SIGLIP_PRESETS",
    "SIGLIP_SO400M_448",
    "VARIANTS",
    "Gemma3Config",
    "Gemma3EngineConfig",
    "GemmaConfig",
    "JointEngineConfig",
    "PI0Config",
    "SiglipConfig",
    "engine_family",
    "gemma3_config",
    "gemma3_expert_config",
    "gemma3_policy_config",
    "gemma_config",
    "siglip_config",
]

DTYPES = ("float32", "bfloat16")
VARIANTS = ("pi0", "pi05")

# family -> (engine config class, backbone config class); the expert is a GemmaConfig in both.
ENGINE_CONFIGS: dict[str, tuple[type[JointEngineConfig], type[GemmaConfig]]] = {
    "gemma": (JointEngineConfig, GemmaConfig),
    "gemma3": (Gemma3EngineConfig, Gemma3Config),
}


@dataclass(frozen=True)
class PI0Config:
    """pi0 / pi0.5 policy configuration (defaults: full-size pi0 = PaliGemma-3B + Gemma-300M expert).

    `attention_implementation` is the policy-level knob: left at `None` it keeps whatever `engine`
    says; set, it is pushed down into `engine`. Architecture only: activation checkpointing (and
    compile, FSDP) are applied to a built model from outside
    (`apply_activation_checkpointing(model, (JointDecoderLayer,))`).
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
        require_positive(
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
        # The policy-level knob pushes down into the engine; unset, the engine's value stays.
        engine = self.engine
        if self.attention_implementation is not None:
            validate_attention_implementation(self.attention_implementation)
            engine = dataclasses.replace(
                engine, attention_implementation=self.attention_implementation
            )
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
        data = _without_training_knobs(dict(data), "PI0Config")
        _check_keys(cls, data, "PI0Config")
        if isinstance(data.get("engine"), dict):
            engine = _without_training_knobs(dict(data["engine"]), "PI0Config.engine")
            family = engine_family(engine)
            engine_cls, backbone_cls = ENGINE_CONFIGS[family]
            engine["family"] = family
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


def engine_family(engine: Mapping[str, Any]) -> str:
    """The engine family of an engine dict: its `family` key, or for dicts written before that
    field existed (vla-core 0.1), `"gemma3"` when it carries the Gemma-3-only
    `enforce_sliding_window` and `"gemma"` otherwise."""
    if "family" in engine:
        family = engine["family"]
        if family not in ENGINE_CONFIGS:
            raise ValueError(
                f"PI0Config.engine.family must be one of {ENGINE_FAMILIES}, got {family!r}"
            )
        return str(family)
    return "gemma3" if "enforce_sliding_window" in engine else "gemma"


# Training knobs that vla-core 0.1 wrote into config.json; read and ignored since 0.2.
_REMOVED_TRAINING_KNOBS = ("gradient_checkpointing",)


def _without_training_knobs(data: dict[str, Any], owner: str) -> dict[str, Any]:
    for key in _REMOVED_TRAINING_KNOBS:
        if key in data:
            data.pop(key)
            warnings.warn(
                f"{owner}.{key} is ignored: configs describe architecture only since vla-core "
                "0.2; apply it to the built model instead (vla_core.apply_activation_checkpointing)",
                DeprecationWarning,
                stacklevel=3,
            )
    return data


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


def gemma3_policy_config(
    variant: str = "pi05",
    *,
    backbone: str | Gemma3Config = "gemma3_4b",
    expert: str | GemmaConfig = "pi07_expert",
    vision: str | SiglipConfig = "so400m_14_448",
    attention_implementation: str = "sdpa",
    **policy_fields: Any,
) -> PI0Config:
    """A `PI0Config` (pi0 or pi0.5 head) on the Gemma-3 engine; `PI0Model` builds it. Presets by
    name or configs; vision `so400m_14_448` (default) or any `SIGLIP_PRESETS` name."""
    engine = Gemma3EngineConfig(
        backbone=gemma3_config(backbone) if isinstance(backbone, str) else backbone,
        expert=gemma3_expert_config(expert) if isinstance(expert, str) else expert,
        attention_implementation=attention_implementation,
    )
    if isinstance(vision, str):
        presets = {"so400m_14_448": SIGLIP_SO400M_448, **SIGLIP_PRESETS}
        if vision not in presets:
            raise ValueError(f"unknown vision preset {vision!r}; known: {sorted(presets)}")
        vision = presets[vision]
    return PI0Config(variant=variant, engine=engine, vision=vision, **policy_fields)  # type: ignore[arg-type]
