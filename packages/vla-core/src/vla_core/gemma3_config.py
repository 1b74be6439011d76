"""Frozen configs of the Gemma-3 engine family (`family="gemma3"`): a Gemma-3 text backbone
(transformers `models/gemma3/configuration_gemma3.py`, `Gemma3TextConfig`) beside a Gemma (v1)
action expert, with presets. The modules live in `vla_core.gemma3`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from vla_core.engine_config import (
    GEMMA_PRESETS,
    EngineFamily,
    GemmaConfig,
    JointEngineConfig,
    SiglipConfig,
)

__all__ = [
    "GEMMA3_EXPERT_PRESETS",
    "GEMMA3_PRESETS",
    "LAYER_TYPES",
    "SIGLIP_SO400M_448",
    "Gemma3Config",
    "Gemma3EngineConfig",
    "gemma3_config",
    "gemma3_expert_config",
]

LAYER_TYPES = ("sliding_attention", "full_attention")
GEMMA3_VOCAB_SIZE = 262_208


@dataclass(frozen=True)
class Gemma3Config(GemmaConfig):
    """A Gemma-3 text decoder (the backbone stream). Field names follow `GemmaConfig`; the extra
    fields mirror transformers' `Gemma3TextConfig` (`query_pre_attn_scalar`, `sliding_window`,
    `layer_types`, `rope_local_base_freq` -> `rope_local_base`, global `rope_theta` ->
    `rope_global_base`). `layer_types=None` -> every `sliding_window_pattern`-th layer is global."""

    vocab_size: int = GEMMA3_VOCAB_SIZE
    query_pre_attn_scalar: int = 256
    sliding_window: int = 1024
    sliding_window_pattern: int = 6
    layer_types: tuple[str, ...] | None = None
    rope_local_base: float = 10_000.0
    rope_global_base: float = 1_000_000.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("query_pre_attn_scalar", "sliding_window", "sliding_window_pattern"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Gemma3Config.{name} must be a positive int, got {value!r}")
        if not (self.rope_local_base > 0 and self.rope_global_base > 0):
            raise ValueError(
                "Gemma3Config.rope_local_base / rope_global_base must be > 0, got "
                f"{self.rope_local_base} / {self.rope_global_base}"
            )
        if self.layer_types is None:
            pattern = self.sliding_window_pattern
            types = tuple(LAYER_TYPES[(i + 1) % pattern == 0] for i in range(self.depth))
            object.__setattr__(self, "layer_types", types)
        else:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        assert self.layer_types is not None
        if len(self.layer_types) != self.depth:
            raise ValueError(
                f"Gemma3Config.layer_types has {len(self.layer_types)} entries, depth is "
                f"{self.depth}"
            )
        unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if unknown:
            raise ValueError(f"Gemma3Config.layer_types: unknown {unknown}; known: {LAYER_TYPES}")

    @property
    def attention_scale(self) -> float:
        """`query_pre_attn_scalar ** -0.5` (== head_dim ** -0.5 only when the two agree)."""
        return float(self.query_pre_attn_scalar) ** -0.5

    def rope_base(self, layer: int) -> float:
        """RoPE base (max wavelength) of layer `layer`: local for sliding, global for full."""
        assert self.layer_types is not None
        is_global = self.layer_types[layer] == "full_attention"
        return self.rope_global_base if is_global else self.rope_local_base


GEMMA3_PRESETS: dict[str, Gemma3Config] = {
    # google/gemma-3-4b text decoder (OpenTau pi06 / pi07 backbone): 5 sliding : 1 global.
    "gemma3_4b": Gemma3Config(
        width=2560, depth=34, mlp_dim=10_240, num_heads=8, num_kv_heads=4, head_dim=256
    ),
    # Unit tests: GQA 4/2, one layer of each type, query_pre_attn_scalar != head_dim on purpose.
    "gemma3_tiny": Gemma3Config(
        width=48,
        depth=2,
        mlp_dim=96,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        vocab_size=128,
        query_pre_attn_scalar=24,
        sliding_window=4,
        layer_types=("sliding_attention", "full_attention"),
    ),
}

GEMMA3_EXPERT_PRESETS: dict[str, GemmaConfig] = {
    # OpenTau pi07's action expert shape (w 1280, mlp 5120): shares heads / kv heads / head_dim /
    # depth with gemma3_4b; 0.94 B weights + 0.33 B AdaRMS modulation in the pi0.5 layout.
    "pi07_expert": GemmaConfig(
        width=1280, depth=34, mlp_dim=5120, num_heads=8, num_kv_heads=4, head_dim=256
    ),
    "gemma3_tiny_expert": GEMMA_PRESETS["gemma_tiny_expert"],
}

# SigLIP So400m/14 at 448² (1024 tokens per camera), the pi06 / pi07 vision option.
SIGLIP_SO400M_448 = SiglipConfig(image_size=448)


def gemma3_config(name: str) -> Gemma3Config:
    """Look up a Gemma-3 backbone preset (`gemma3_4b`, `gemma3_tiny`)."""
    if name not in GEMMA3_PRESETS:
        raise ValueError(f"unknown Gemma-3 preset {name!r}; known: {sorted(GEMMA3_PRESETS)}")
    return GEMMA3_PRESETS[name]


def gemma3_expert_config(name: str) -> GemmaConfig:
    """Look up an expert preset sized for a Gemma-3 backbone (`pi07_expert`, `gemma3_tiny_expert`)."""
    if name not in GEMMA3_EXPERT_PRESETS:
        raise ValueError(
            f"unknown Gemma-3 expert preset {name!r}; known: {sorted(GEMMA3_EXPERT_PRESETS)}"
        )
    return GEMMA3_EXPERT_PRESETS[name]


@dataclass(frozen=True)
class Gemma3EngineConfig(JointEngineConfig):
    """The two-stream engine with a Gemma-3 backbone. A `JointEngineConfig`, so `PI0Config`'s
    policy-level `attention_implementation` pushes down unchanged.

    RoPE bases come per layer from `backbone` (`rope_max_wavelength` must stay at its default).
    `enforce_sliding_window`: the only supported value is False — sliding windows are not applied
    across the block-causal VLA mask (every layer sees the same mask, OpenTau pi07 semantics).
    """

    FAMILY: ClassVar[str] = "gemma3"

    backbone: GemmaConfig = field(default_factory=lambda: GEMMA3_PRESETS["gemma3_4b"])
    expert: GemmaConfig = field(default_factory=lambda: GEMMA3_EXPERT_PRESETS["pi07_expert"])
    enforce_sliding_window: bool = False
    family: EngineFamily = "gemma3"

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, Gemma3Config):
            raise ValueError(
                "Gemma3EngineConfig.backbone must be a Gemma3Config, got "
                f"{type(self.backbone).__name__}"
            )
        super().__post_init__()
        if self.rope_max_wavelength != 10_000.0:
            raise ValueError(
                "Gemma3EngineConfig takes its RoPE bases per layer from backbone.rope_local_base /"
                f" backbone.rope_global_base; got rope_max_wavelength={self.rope_max_wavelength}"
            )
        if self.enforce_sliding_window is not False:
            raise ValueError(
                "Gemma3EngineConfig.enforce_sliding_window must be False: the block-causal VLA "
                "mask lets every prefix token (all cameras' image tokens) see every other, and "
                "the prefix cache carries no positions to window by; sliding windows are not "
                f"supported (got {self.enforce_sliding_window!r})"
            )

    @property
    def gemma3_backbone(self) -> Gemma3Config:
        assert isinstance(self.backbone, Gemma3Config)
        return self.backbone
