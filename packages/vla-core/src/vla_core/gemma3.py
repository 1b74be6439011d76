"""Gemma-3 backbone + Gemma (v1, AdaRMS) action expert on the shared joint engine (pi06/pi07-style).

Only the backbone's sublayers are new (transformers
`models/gemma3/modeling_gemma3.py`, `Gemma3Attention` / `Gemma3DecoderLayer`): per-head `q_norm` / `k_norm` after
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

The configs (`Gemma3Config`, `Gemma3EngineConfig`, presets) live in `vla_core.gemma3_config`.

Word embeddings are scaled by `sqrt(width)` once, by the policy (`PI0Model.embed_prefix`), exactly
as transformers' `Gemma3TextScaledWordEmbedding` does; nothing in the engine scales again.
"""

from __future__ import annotations

from torch import Tensor, nn

from vla_core.engine import JointEngine
from vla_core.engine_config import GemmaConfig
from vla_core.gemma3_config import Gemma3Config, Gemma3EngineConfig
from vla_core.layers import (
    GemmaAttentionProjections,
    GemmaMLP,
    JointDecoderLayer,
    RMSNorm,
    StreamBlock,
)

__all__ = [
    "Gemma3AttentionProjections",
    "Gemma3JointEngine",
    "Gemma3StreamBlock",
]


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

    def output_only_modules(self) -> list[nn.Module]:
        attn = self.self_attn
        return [
            attn.q_proj,
            attn.q_norm,
            attn.o_proj,
            self.post_attention_layernorm,
            self.pre_feedforward_layernorm,
            self.mlp,
            self.post_feedforward_layernorm,
        ]


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
