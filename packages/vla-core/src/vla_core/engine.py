"""The two-stream engine: a stack of `JointDecoderLayer`s, final norms, and a read-only prefix cache.

Three call modes, one layer implementation (openpi `src/openpi/models/pi0.py`:
`compute_loss` runs the joint pass, `sample_actions` fills the prefix cache once):
- joint   `engine(prefix, suffix, ...)`: pi0 training, full 2-D block-causal mask;
- fill    `engine(prefix, None, ...)`: returns a `PrefixCache` of post-RoPE K/V per layer;
- read    `engine(None, suffix, cache=...)`: attends to `[cache ; own K/V]`, concatenated locally,
  so the cache is never mutated nor cloned while denoising.
Under the prefix-LM mask the prefix never sees the suffix, so joint ≡ fill + read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from vla_core.engine_config import JointEngineConfig
from vla_core.layers import JointDecoderLayer, RMSNorm, rope_cos_sin
from vla_core.masks import BlockCausalMask

__all__ = ["EngineOutput", "JointEngine", "PrefixCache"]


@dataclass(frozen=True)
class PrefixCache:
    """Per-layer post-RoPE prefix K/V `[B, Hkv, P, D]` plus the prefix pad / ar masks `[B, P]`."""

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]
    pad_mask: Tensor
    ar_mask: Tensor

    @property
    def length(self) -> int:
        return int(self.pad_mask.shape[1])

    def detach(self) -> PrefixCache:
        """Knowledge insulation: stop the action loss's gradient at the VLM."""
        return PrefixCache(
            tuple(k.detach() for k in self.keys),
            tuple(v.detach() for v in self.values),
            self.pad_mask,
            self.ar_mask,
        )

    def repeat_interleave(self, repeats: int) -> PrefixCache:
        """Expand along the batch once (e.g. several noise samples per observation)."""
        return PrefixCache(
            tuple(k.repeat_interleave(repeats, 0) for k in self.keys),
            tuple(v.repeat_interleave(repeats, 0) for v in self.values),
            self.pad_mask.repeat_interleave(repeats, 0),
            self.ar_mask.repeat_interleave(repeats, 0),
        )


class EngineOutput(NamedTuple):
    prefix: Tensor | None  # [B, Lp, Dp] after the backbone's final norm
    suffix: Tensor | None  # [B, Ls, De] after the expert's final (Ada)RMSNorm
    cache: PrefixCache | None  # set by the fill call `(prefix, None)`


class JointEngine(nn.Module):
    """Backbone (PaliGemma's Gemma) + action expert, depth-many joint layers and final norms.

    The expert token embedding and lm_head are deliberately absent (never used by pi0).
    """

    def __init__(
        self,
        config: JointEngineConfig,
        *,
        expert_cond_dim: int | None = None,
        layers: Sequence[JointDecoderLayer] | None = None,
        rope_bases: Sequence[float] | None = None,
    ) -> None:
        """`layers` / `rope_bases` (one per layer) let another engine family (e.g. Gemma-3 with
        per-layer RoPE bases) reuse this stack; by default Gemma-v1 layers with one base,
        `config.rope_max_wavelength`."""
        super().__init__()
        self.config = config
        depth = config.backbone.depth
        if layers is None:
            layers = [
                JointDecoderLayer(
                    config.backbone,
                    config.expert,
                    expert_cond_dim=expert_cond_dim,
                    attention_implementation=config.attention_implementation,
                )
                for _ in range(depth)
            ]
        if rope_bases is None:
            rope_bases = [config.rope_max_wavelength] * depth
        if len(layers) != depth or len(rope_bases) != depth:
            raise ValueError(
                f"JointEngine needs one layer and one RoPE base per layer (depth {depth}), got "
                f"{len(layers)} layers, {len(rope_bases)} bases"
            )
        self.layers = nn.ModuleList(layers)
        self.rope_bases: tuple[float, ...] = tuple(float(base) for base in rope_bases)
        self.backbone_norm = RMSNorm(config.backbone.width, config.backbone.rms_norm_eps)
        self.expert_norm = RMSNorm(config.expert.width, config.expert.rms_norm_eps, expert_cond_dim)

    def forward(
        self,
        prefix: Tensor | None,
        suffix: Tensor | None,
        *,
        pad_mask: Tensor,
        ar_mask: Tensor,
        positions: Tensor,
        cache: PrefixCache | None = None,
        expert_cond: Tensor | None = None,
    ) -> EngineOutput:
        """prefix [B, Lp, Dp] | None, suffix [B, Ls, De] | None; pad_mask / ar_mask / positions
        [B, Lp+Ls] describe the tokens of this call; `cache` supplies earlier tokens' K/V."""
        if prefix is None and suffix is None:
            raise ValueError("JointEngine needs a prefix, a suffix or both")
        if cache is not None and prefix is not None:
            raise ValueError("a cached call takes only the suffix: engine(None, suffix, cache=...)")
        num_tokens = sum(x.shape[1] for x in (prefix, suffix) if x is not None)
        for name, tensor in (
            ("pad_mask", pad_mask),
            ("ar_mask", ar_mask),
            ("positions", positions),
        ):
            if tensor.shape[-1] != num_tokens:
                raise ValueError(
                    f"{name} has {tensor.shape[-1]} tokens, the call has {num_tokens} "
                    f"(prefix {None if prefix is None else tuple(prefix.shape)}, "
                    f"suffix {None if suffix is None else tuple(suffix.shape)})"
                )
        if cache is not None:
            if len(cache.keys) != len(self.layers):
                raise ValueError(f"cache has {len(cache.keys)} layers, engine {len(self.layers)}")
            key_pad = torch.cat([cache.pad_mask, pad_mask], dim=1)
            key_ar = torch.cat([cache.ar_mask, ar_mask], dim=1)
        else:
            key_pad, key_ar = pad_mask, ar_mask
        mask_spec = BlockCausalMask.from_ar(key_pad, key_ar, num_queries=num_tokens)
        dense_mask: Tensor | None = None
        block_mask: Any = None
        if self.config.attention_implementation == "flex":
            block_mask = mask_spec.flex_block_mask()
        else:
            dense_mask = mask_spec.dense()
        # One (cos, sin) per distinct base, over the full-sequence positions of this call.
        ropes = {
            base: rope_cos_sin(positions, self.config.backbone.head_dim, base)
            for base in dict.fromkeys(self.rope_bases)
        }

        keys: list[Tensor] = []
        values: list[Tensor] = []
        for index, layer in enumerate(self.layers):
            layer_cache = None if cache is None else (cache.keys[index], cache.values[index])
            prefix, suffix, key, value = layer(
                prefix,
                suffix,
                ropes[self.rope_bases[index]],
                dense_mask,
                kv_cache=layer_cache,
                expert_cond=expert_cond,
                block_mask=block_mask,
            )
            keys.append(key)
            values.append(value)

        prefix_out = None if prefix is None else self.backbone_norm(prefix)[0]
        suffix_out = None if suffix is None else self.expert_norm(suffix, expert_cond)[0]
        new_cache = None
        if prefix is not None and suffix is None:
            new_cache = PrefixCache(tuple(keys), tuple(values), pad_mask.bool(), ar_mask.bool())
        return EngineOutput(prefix_out, suffix_out, new_cache)
