"""Gemma building blocks and the joint two-stream decoder layer.

Semantics follow openpi `src/openpi/models/gemma.py` (Block / Attention / FeedForward / RMSNorm,
the mixture-of-experts attention of the pi0 paper, arXiv:2410.24164): per-stream (Ada)RMSNorm → q/k/v → concatenate the
streams along the sequence → RoPE with full-sequence positions (split-half, fp32) → one attention
→ split → per-stream o_proj, gated residual, norm, GeGLU MLP, gated residual.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla_core.attention import attend, validate_attention_implementation
from vla_core.engine_config import GemmaConfig

__all__ = [
    "GemmaMLP",
    "GemmaStreamBlock",
    "JointDecoderLayer",
    "RMSNorm",
    "StreamBlock",
    "apply_rope",
    "rope_cos_sin",
]


class RMSNorm(nn.Module):
    """Gemma RMSNorm `x·rsqrt(mean(x²)+eps)·(1+w)` in fp32; with `cond_dim` it is AdaRMS.

    AdaRMS (pi0.5 expert): `dense(cond) -> (scale, shift, gate)`, `y = x̂·(1+scale)+shift`, and the
    gate is returned for the gated residual. `dense` is zero-initialised (openpi), so a fresh
    pi0.5 ignores time until trained. cond: `[B, cond_dim]` (per sample) or `[B, L, cond_dim]`.
    """

    def __init__(self, dim: int, eps: float = 1e-6, cond_dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.cond_dim = cond_dim
        if cond_dim is None:
            self.weight: nn.Parameter | None = nn.Parameter(torch.zeros(dim))
            self.dense: nn.Linear | None = None
        else:
            self.weight = None
            self.dense = nn.Linear(cond_dim, 3 * dim, bias=True)
            nn.init.zeros_(self.dense.weight)
            nn.init.zeros_(self.dense.bias)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.dense is None:
            assert self.weight is not None
            return (normed * (1.0 + self.weight.float())).to(x.dtype), None
        if cond is None:
            raise ValueError("adaptive RMSNorm needs a conditioning tensor (cond), got None")
        modulation = self.dense(cond.to(self.dense.weight.dtype)).float()
        if modulation.ndim == x.ndim - 1:  # per-sample cond [B, 3D] -> [B, 1, 3D]
            modulation = modulation.unsqueeze(-2)
        scale, shift, gate = modulation.chunk(3, dim=-1)
        return (normed * (1.0 + scale) + shift).to(x.dtype), gate


def gated_residual(x: Tensor, y: Tensor, gate: Tensor | None) -> Tensor:
    """`x + y` (plain norm) or `x + y·gate` (AdaRMS)."""
    if gate is None:
        return x + y
    return x + y * gate.to(y.dtype)


class GemmaMLP(nn.Module):
    """GeGLU feed-forward: `down(gelu_tanh(gate(x)) * up(x))`."""

    def __init__(self, width: int, mlp_dim: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(width, mlp_dim, bias=False)
        self.up_proj = nn.Linear(width, mlp_dim, bias=False)
        self.down_proj = nn.Linear(mlp_dim, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class GemmaAttentionProjections(nn.Module):
    """q/k/v/o projections of one stream (no biases). The attention itself is joint."""

    def __init__(self, config: GemmaConfig) -> None:
        super().__init__()
        hd = config.head_dim
        self.q_proj = nn.Linear(config.width, config.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(config.width, config.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(config.width, config.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(config.num_heads * hd, config.width, bias=False)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, L, width] -> q [B, L, H·D], k / v [B, L, Hkv·D] (`vla_core.fusion` fuses them)."""
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)


class StreamBlock(nn.Module):
    """One stream's sublayers of a joint decoder layer: everything except the shared attention.

    `attention_inputs` maps the stream's hidden states to its q/k/v (pre-RoPE, `[B, L, H, D]`) and
    an optional residual gate; `attention_output` takes the stream's attended rows `[B, L, H·D]`
    back to the next hidden states. Subclasses choose the norms / residual layout (Gemma v1 +
    AdaRMS here, Gemma-3 sandwich norms in `vla_core.gemma3`); `config` supplies the head layout.
    """

    config: GemmaConfig

    def attention_inputs(
        self, hidden: Tensor, cond: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        raise NotImplementedError

    def attention_output(
        self, hidden: Tensor, attended: Tensor, cond: Tensor | None, gate: Tensor | None
    ) -> Tensor:
        raise NotImplementedError

    def output_only_modules(self) -> list[nn.Module]:
        """Submodules that shape only this stream's own output rows, never its keys / values. In
        the last layer of the backbone they cannot reach the action loss (the expert reads the
        prefix through K/V only)."""
        raise NotImplementedError


class GemmaStreamBlock(StreamBlock):
    """Gemma (v1) sublayers with Gemma parameter names; AdaRMS norms when `cond_dim` is set."""

    def __init__(self, config: GemmaConfig, cond_dim: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.input_layernorm = RMSNorm(config.width, config.rms_norm_eps, cond_dim)
        self.self_attn = GemmaAttentionProjections(config)
        self.post_attention_layernorm = RMSNorm(config.width, config.rms_norm_eps, cond_dim)
        self.mlp = GemmaMLP(config.width, config.mlp_dim)

    def attention_inputs(
        self, hidden: Tensor, cond: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        batch, length, _ = hidden.shape
        config, attn = self.config, self.self_attn
        normed, gate = self.input_layernorm(hidden, cond)
        query, key, value = attn.project_qkv(normed)
        query = query.view(batch, length, config.num_heads, config.head_dim)
        key = key.view(batch, length, config.num_kv_heads, config.head_dim)
        value = value.view(batch, length, config.num_kv_heads, config.head_dim)
        return query, key, value, gate

    def attention_output(
        self, hidden: Tensor, attended: Tensor, cond: Tensor | None, gate: Tensor | None
    ) -> Tensor:
        o_proj = self.self_attn.o_proj
        hidden = gated_residual(hidden, o_proj(attended.to(o_proj.weight.dtype)), gate)
        normed, gate = self.post_attention_layernorm(hidden, cond)
        return gated_residual(hidden, self.mlp(normed), gate)

    def output_only_modules(self) -> list[nn.Module]:
        attn = self.self_attn
        return [attn.q_proj, attn.o_proj, self.post_attention_layernorm, self.mlp]


def rope_cos_sin(
    positions: Tensor, head_dim: int, max_wavelength: float = 10_000.0
) -> tuple[Tensor, Tensor]:
    """openpi RoPE angles in fp32: positions [B, L] -> (cos, sin) [B, L, head_dim/2]."""
    exponents = (2.0 / head_dim) * torch.arange(
        head_dim // 2, dtype=torch.float32, device=positions.device
    )
    timescale = max_wavelength**exponents
    radians = positions.to(torch.float32)[..., None] / timescale
    return torch.cos(radians), torch.sin(radians)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Split-half rotation `[x1·cos − x2·sin, x2·cos + x1·sin]` in fp32. x: [B, L, H, D]."""
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


class JointDecoderLayer(nn.Module):
    """One decoder layer of the two-stream mixture (backbone = prefix, expert = suffix).

    A real module owning both streams' parameters, so hooks (FSDP, checkpointing, compile) see it.
    Either stream may be None: `[prefix, suffix]` is the joint pass, `[prefix, None]` the prefix
    pass whose post-RoPE K/V the caller caches, `[None, suffix]` the suffix pass reading
    `kv_cache`. Returns `(prefix_out, suffix_out, key, value)` with key/value `[B, Hkv, L, D]`
    post-RoPE for the tokens of this call (cache not included); nothing is mutated.

    Each stream is a `GemmaConfig` (built as a Gemma-v1 `GemmaStreamBlock`, AdaRMS for the expert
    when `expert_cond_dim` is set) or a ready `StreamBlock` (e.g. a Gemma-3 backbone block).
    `attention_scale` defaults to `head_dim ** -0.5`; it is passed explicitly to every backend.
    """

    def __init__(
        self,
        backbone: GemmaConfig | StreamBlock,
        expert: GemmaConfig | StreamBlock,
        *,
        expert_cond_dim: int | None = None,
        attention_implementation: str = "sdpa",
        attention_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.backbone = (
            backbone if isinstance(backbone, StreamBlock) else GemmaStreamBlock(backbone)
        )
        if isinstance(expert, StreamBlock):
            if expert_cond_dim is not None:
                raise ValueError("expert_cond_dim applies to an expert given as a GemmaConfig only")
            self.expert = expert
        else:
            self.expert = GemmaStreamBlock(expert, expert_cond_dim)
        first, second = self.backbone.config, self.expert.config
        for name in ("num_heads", "num_kv_heads", "head_dim"):
            if getattr(first, name) != getattr(second, name):
                raise ValueError(
                    f"backbone and expert must share {name} for the joint attention: "
                    f"{getattr(first, name)} != {getattr(second, name)}"
                )
        self.num_heads = first.num_heads
        self.num_kv_heads = first.num_kv_heads
        self.head_dim = first.head_dim
        self.attention_implementation = validate_attention_implementation(attention_implementation)
        if attention_scale is None:
            attention_scale = 1.0 / math.sqrt(self.head_dim)
        if not attention_scale > 0:
            raise ValueError(f"attention_scale must be > 0, got {attention_scale}")
        self.attention_scale = float(attention_scale)

    def forward(
        self,
        prefix: Tensor | None,
        suffix: Tensor | None,
        rope: tuple[Tensor, Tensor],
        mask: Tensor | None,
        *,
        kv_cache: tuple[Tensor, Tensor] | None = None,
        expert_cond: Tensor | None = None,
        block_mask: Any = None,
    ) -> tuple[Tensor | None, Tensor | None, Tensor, Tensor]:
        """prefix [B, Lp, Dp] | None, suffix [B, Ls, De] | None; rope = (cos, sin) [B, Lp+Ls, hd/2];
        mask [B, Lp+Ls, Lcache+Lp+Ls] bool (None = full, or flex with `block_mask`)."""
        streams: list[tuple[StreamBlock, Tensor | None, Tensor | None]] = [
            (self.backbone, prefix, None),
            (self.expert, suffix, expert_cond),
        ]
        queries, keys, values, lengths = [], [], [], []
        gates: list[Tensor | None] = []
        for block, hidden, cond in streams:
            if hidden is None:
                continue
            query, key, value, gate = block.attention_inputs(hidden, cond)
            queries.append(query)
            keys.append(key)
            values.append(value)
            lengths.append(hidden.shape[1])
            gates.append(gate)
        if not lengths:
            raise ValueError("JointDecoderLayer needs at least one of prefix / suffix")

        # RoPE after concatenation: both streams rotate with the full-sequence positions.
        cos, sin = rope
        query = apply_rope(torch.cat(queries, dim=1), cos, sin).transpose(1, 2)  # [B, Hq, L, D]
        key = apply_rope(torch.cat(keys, dim=1), cos, sin).transpose(1, 2)  # [B, Hkv, L, D]
        value = torch.cat(values, dim=1).transpose(1, 2)  # [B, Hkv, L, D]
        if kv_cache is not None:
            all_keys = torch.cat([kv_cache[0], key], dim=2)
            all_values = torch.cat([kv_cache[1], value], dim=2)
        else:
            all_keys, all_values = key, value

        attended = attend(
            query,
            all_keys,
            all_values,
            mask,
            scale=self.attention_scale,
            implementation=self.attention_implementation,
            block_mask=block_mask,
        )
        batch = attended.shape[0]
        attended = attended.transpose(1, 2).reshape(batch, -1, self.num_heads * self.head_dim)

        outputs: list[Tensor | None] = []
        rows = iter(attended.split(lengths, dim=1))
        gate_iter = iter(gates)
        for block, hidden, cond in streams:
            if hidden is None:
                outputs.append(None)
                continue
            outputs.append(block.attention_output(hidden, next(rows), cond, next(gate_iter)))
        return outputs[0], outputs[1], key, value
