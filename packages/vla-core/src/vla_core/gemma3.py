"""Gemma-3 backbone + Gemma (v1, AdaRMS) action expert on the shared joint engine (pi06/pi07-style).

Only the backbone's sublayers are new (reference sheet §2, §3): per-head `q_norm` / `k_norm` after
the q/k projections and sandwich norms (`x + post_attn_norm(o)`, then
`x + post_ffw_norm(mlp(pre_ffw_norm(x)))`). Everything else is the pi0 engine's: one
`JointDecoderLayer` per depth (a real module owning both streams), the block-causal masks, the
prefix cache, the attention backends and per-layer checkpointing. Gemma-3 specifics enter as
parameters of that shared path:

- the attention scale `query_pre_attn_scalar ** -0.5`, passed explicitly to every backend;
- a RoPE base per layer (`rope_local_base` for `sliding_attention` layers, `rope_global_base` for
  `full_attention` layers), applied to BOTH streams after concatenation with full-sequence
  positions, so joint calls work with any prefix / suffix lengths;
- sliding windows are not applied: every layer sees the block-causal VLA mask (all image tokens
  see each other; several cameras exceed a 1024-token window). `sliding_window` is kept for
  checkpoint compatibility only; `Gemma3EngineConfig.enforce_sliding_window=True` is rejected.

Word embeddings are scaled by `sqrt(width)` once, by the policy (`PI0Model.embed_prefix`), exactly
as transformers' `Gemma3TextScaledWordEmbedding` does; nothing in the engine scales again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from vla_core.config import (
    GEMMA_PRESETS,
    SIGLIP_PRESETS,
    GemmaConfig,
    JointEngineConfig,
    PI0Config,
    SiglipConfig,
)
from vla_core.engine import JointEngine
from vla_core.layers import (
    GemmaAttentionProjections,
    GemmaMLP,
    JointDecoderLayer,
    RMSNorm,
    StreamBlock,
)

__all__ = [
    "GEMMA3_EXPERT_PRESETS",
    "GEMMA3_PRESETS",
    "LAYER_TYPES",
    "SIGLIP_SO400M_448",
    "Gemma3Config",
    "Gemma3EngineConfig",
    "Gemma3JointEngine",
    "Gemma3StreamBlock",
    "gemma3_config",
    "gemma3_expert_config",
    "gemma3_policy_config",
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
    policy-level `attention_implementation` / `gradient_checkpointing` push down unchanged.

    RoPE bases come per layer from `backbone` (`rope_max_wavelength` must stay at its default).
    `enforce_sliding_window`: the only supported value is False — sliding windows are not applied
    across the block-causal VLA mask (every layer sees the same mask, OpenTau pi07 semantics).
    """

    backbone: GemmaConfig = field(default_factory=lambda: GEMMA3_PRESETS["gemma3_4b"])
    expert: GemmaConfig = field(default_factory=lambda: GEMMA3_EXPERT_PRESETS["pi07_expert"])
    enforce_sliding_window: bool = False

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


class Gemma3AttentionProjections(GemmaAttentionProjections):
    """q/k/v/o projections plus per-head `q_norm` / `k_norm` (Gemma-3 RMSNorm over head_dim)."""

    def __init__(self, config: GemmaConfig) -> None:
        super().__init__(config)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps)


class Gemma3StreamBlock(StreamBlock):
    """Gemma-3 decoder sublayers with transformers' parameter names (`Gemma3DecoderLayer`)."""

    def __init__(self, config: Gemma3Config) -> None:
        super().__init__()
        self.config = config
        width, eps = config.width, config.rms_norm_eps
        self.input_layernorm = RMSNorm(width, eps)
        self.self_attn = Gemma3AttentionProjections(config)
        self.post_attention_layernorm = RMSNorm(width, eps)
        self.pre_feedforward_layernorm = RMSNorm(width, eps)
        self.mlp = GemmaMLP(width, config.mlp_dim)
        self.post_feedforward_layernorm = RMSNorm(width, eps)

    def attention_inputs(
        self, hidden: Tensor, cond: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        if cond is not None:
            raise ValueError("the Gemma-3 backbone block takes no conditioning (cond)")
        batch, length, _ = hidden.shape
        config, attn = self.config, self.self_attn
        normed = self.input_layernorm(hidden)[0]
        query = attn.q_proj(normed).view(batch, length, config.num_heads, config.head_dim)
        key = attn.k_proj(normed).view(batch, length, config.num_kv_heads, config.head_dim)
        value = attn.v_proj(normed).view(batch, length, config.num_kv_heads, config.head_dim)
        return attn.q_norm(query)[0], attn.k_norm(key)[0], value, None

    def attention_output(
        self, hidden: Tensor, attended: Tensor, cond: Tensor | None, gate: Tensor | None
    ) -> Tensor:
        o_proj = self.self_attn.o_proj
        attn_out = o_proj(attended.to(o_proj.weight.dtype))
        hidden = hidden + self.post_attention_layernorm(attn_out)[0]
        mlp_out = self.mlp(self.pre_feedforward_layernorm(hidden)[0])
        return hidden + self.post_feedforward_layernorm(mlp_out)[0]


class Gemma3JointEngine(JointEngine):
    """`JointEngine` whose layers pair a Gemma-3 backbone block with a Gemma expert block (AdaRMS
    when `expert_cond_dim` is set), with the Gemma-3 attention scale and per-layer RoPE bases.
    Same call modes (joint / prefix fill / cached suffix), cache and checkpointing as pi0's."""

    def __init__(self, config: Gemma3EngineConfig, *, expert_cond_dim: int | None = None) -> None:
        if not isinstance(config, Gemma3EngineConfig):
            raise TypeError(f"Gemma3JointEngine needs a Gemma3EngineConfig, got {type(config)}")
        backbone = config.gemma3_backbone
        layers = [
            JointDecoderLayer(
                Gemma3StreamBlock(backbone),
                config.expert,
                expert_cond_dim=expert_cond_dim,
                attention_implementation=config.attention_implementation,
                attention_scale=backbone.attention_scale,
            )
            for _ in range(backbone.depth)
        ]
        rope_bases = [backbone.rope_base(index) for index in range(backbone.depth)]
        super().__init__(
            config, expert_cond_dim=expert_cond_dim, layers=layers, rope_bases=rope_bases
        )

    @property
    def layer_types(self) -> tuple[str, ...]:
        types = self.config.backbone.layer_types  # type: ignore[attr-defined]
        assert isinstance(types, tuple)
        return types


def gemma3_policy_config(
    variant: str = "pi05",
    *,
    backbone: str | Gemma3Config = "gemma3_4b",
    expert: str | GemmaConfig = "pi07_expert",
    vision: str | SiglipConfig = "so400m_14_448",
    attention_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
    **policy_fields: Any,
) -> PI0Config:
    """A `PI0Config` (pi0 or pi0.5 head) on the Gemma-3 engine; `PI0Model` builds it. Presets by
    name or configs; vision `so400m_14_448` (default) or any `SIGLIP_PRESETS` name."""
    engine = Gemma3EngineConfig(
        backbone=gemma3_config(backbone) if isinstance(backbone, str) else backbone,
        expert=gemma3_expert_config(expert) if isinstance(expert, str) else expert,
        attention_implementation=attention_implementation,
        gradient_checkpointing=gradient_checkpointing,
    )
    if isinstance(vision, str):
        presets = {"so400m_14_448": SIGLIP_SO400M_448, **SIGLIP_PRESETS}
        if vision not in presets:
            raise ValueError(f"unknown vision preset {vision!r}; known: {sorted(presets)}")
        vision = presets[vision]
    return PI0Config(variant=variant, engine=engine, vision=vision, **policy_fields)  # type: ignore[arg-type]
