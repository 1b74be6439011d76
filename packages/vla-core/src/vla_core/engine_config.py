"""Frozen configs of the engine's parts: one Gemma stack, the SigLIP tower and the two-stream Gemma
engine (`family="gemma"`), with presets. Field layout follows openpi `gemma.get_config` and
`pi0_config.Pi0Config`: a backbone and an action expert that share heads / kv heads / head_dim /
depth (openpi `src/openpi/models/gemma.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from vla_core.attention import validate_attention_implementation

__all__ = [
    "ENGINE_FAMILIES",
    "GEMMA_PRESETS",
    "SIGLIP_PRESETS",
    "EngineFamily",
    "GemmaConfig",
    "JointEngineConfig",
    "SiglipConfig",
    "gemma_config",
    "require_positive",
    "siglip_config",
]

EngineFamily = Literal["gemma", "gemma3"]
ENGINE_FAMILIES: tuple[str, ...] = ("gemma", "gemma3")
PALIGEMMA_VOCAB_SIZE = 257_152


def require_positive(owner: str, **values: int) -> None:
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
        require_positive(
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
        require_positive(
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
    """The two-stream Gemma engine: backbone (prefix) + action expert (suffix), one joint attention.

    `family` names the engine family (and so the config class, see `ENGINE_FAMILIES`): `"gemma"`
    here, `"gemma3"` for `Gemma3EngineConfig`; `PI0Config.from_dict` dispatches on it."""

    FAMILY: ClassVar[str] = "gemma"

    backbone: GemmaConfig = field(default_factory=lambda: GEMMA_PRESETS["gemma_2b"])
    expert: GemmaConfig = field(default_factory=lambda: GEMMA_PRESETS["gemma_300m"])
    attention_implementation: str = "sdpa"
    rope_max_wavelength: float = 10_000.0
    family: EngineFamily = "gemma"

    def __post_init__(self) -> None:
        if self.family != self.FAMILY:
            raise ValueError(
                f"{type(self).__name__}.family must be {self.FAMILY!r}, got {self.family!r} "
                f"(families: {ENGINE_FAMILIES})"
            )
        validate_attention_implementation(self.attention_implementation)
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
