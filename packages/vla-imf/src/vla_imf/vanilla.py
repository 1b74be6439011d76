"""diffusion_policy-style `TransformerForDiffusion` with two time tokens (r, t) for MeanFlow.

Mirrors `diffusion_policy/model/diffusion/transformer_for_diffusion.py` (time_as_cond,
obs_as_cond): cond tokens `[sin(r), sin(t), Linear(obs)…] + learned positions`, an MLP (or a
pre-norm encoder) over them, then a pre-norm decoder over action tokens with learned positions,
`ln_f` and a linear head. The layers are written out (instead of `nn.TransformerDecoder`) so
attention goes through `vla_core.attention.attend`; they reproduce `nn.TransformerDecoderLayer`
(norm_first, GELU, 4× FF) exactly, except that attention-probability dropout is not applied.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla_core.attention import attend
from vla_imf._checks import check_backbone_inputs
from vla_imf.backbone_config import VanillaBackboneConfig
from vla_imf.layers import SinusoidalTimeEmbedding, init_linear_normal


class MultiHeadAttention(nn.Module):
    """Biased q/k/v/out projections as in `nn.MultiheadAttention` (batch_first)."""

    def __init__(self, n_emb: int, n_head: int, implementation: str) -> None:
        super().__init__()
        self.n_head = n_head
        self.head_dim = n_emb // n_head
        self.implementation = implementation
        self.q_proj = nn.Linear(n_emb, n_emb)
        self.k_proj = nn.Linear(n_emb, n_emb)
        self.v_proj = nn.Linear(n_emb, n_emb)
        self.out_proj = nn.Linear(n_emb, n_emb)

    def _heads(self, x: Tensor) -> Tensor:  # [B, L, D] -> [B, H, L, d]
        return x.view(x.shape[0], x.shape[1], self.n_head, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, memory: Tensor, mask: Tensor | None) -> Tensor:
        """`x [B, Lq, D]` attends to `memory [B, Lk, D]`; `mask [B, Lq, Lk]` True = visible."""
        q, k, v = (
            self._heads(self.q_proj(x)),
            self._heads(self.k_proj(memory)),
            self._heads(self.v_proj(memory)),
        )
        out = attend(
            q, k, v, mask, scale=1.0 / math.sqrt(self.head_dim), implementation=self.implementation
        )
        return self.out_proj(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class FeedForward(nn.Module):
    """`linear2(dropout(gelu(linear1(x))))` with a 4× hidden width."""

    def __init__(self, n_emb: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(n_emb, 4 * n_emb)
        self.linear2 = nn.Linear(4 * n_emb, n_emb)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(F.gelu(self.linear1(x))))


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + FF block (`nn.TransformerEncoderLayer(norm_first=True)`)."""

    def __init__(self, config: VanillaBackboneConfig) -> None:
        super().__init__()
        d = config.n_emb
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = MultiHeadAttention(d, config.n_head, config.attention_implementation)
        self.ff = FeedForward(d, config.p_drop_attn)
        self.dropout1, self.dropout2 = (
            nn.Dropout(config.p_drop_attn),
            nn.Dropout(config.p_drop_attn),
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.dropout1(self.self_attn(h, h, None))
        return x + self.dropout2(self.ff(self.norm2(x)))


class DecoderLayer(nn.Module):
    """Pre-norm self-attn, cross-attn, FF (`nn.TransformerDecoderLayer(norm_first=True)`)."""

    def __init__(self, config: VanillaBackboneConfig) -> None:
        super().__init__()
        d = config.n_emb
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = MultiHeadAttention(d, config.n_head, config.attention_implementation)
        self.cross_attn = MultiHeadAttention(d, config.n_head, config.attention_implementation)
        self.ff = FeedForward(d, config.p_drop_attn)
        self.dropout1 = nn.Dropout(config.p_drop_attn)
        self.dropout2 = nn.Dropout(config.p_drop_attn)
        self.dropout3 = nn.Dropout(config.p_drop_attn)

    def forward(
        self, x: Tensor, memory: Tensor, self_mask: Tensor | None, memory_mask: Tensor | None
    ) -> Tensor:
        h = self.norm1(x)
        x = x + self.dropout1(self.self_attn(h, h, self_mask))
        x = x + self.dropout2(self.cross_attn(self.norm2(x), memory, memory_mask))
        return x + self.dropout3(self.ff(self.norm3(x)))


class VanillaBackbone(nn.Module):
    """`u_θ(sample [B,T,Da], r [B], t [B], cond [B,To,Dc]) -> [B,T,Da]` (encoder-decoder).

    With `causal_attn`, action token i sees actions ≤ i and cond tokens `[r, t, obs_0..obs_i]`
    (diffusion_policy's memory mask `i ≥ s − 1`, shifted by the extra time token).
    """

    def __init__(self, config: VanillaBackboneConfig) -> None:
        super().__init__()
        if not isinstance(config, VanillaBackboneConfig):
            raise ValueError(
                f"VanillaBackbone needs kind='vanilla' (VanillaBackboneConfig), got {config!r}"
            )
        self.config = config
        d = config.n_emb
        patch = config.action_patch  # consecutive steps per action token
        self.input_emb = nn.Linear(config.input_dim * patch, d)
        self.pos_emb = nn.Parameter(torch.zeros(1, config.horizon // patch, d))
        self.time_emb = SinusoidalTimeEmbedding(d, config.time_scale)
        self.cond_obs_emb = nn.Linear(config.cond_dim, d)
        self.cond_pos_emb = nn.Parameter(torch.zeros(1, config.n_cond_tokens, d))
        self.drop = nn.Dropout(config.p_drop_emb)
        self.encoder: nn.Module
        if config.n_cond_layers > 0:
            self.encoder = nn.Sequential(
                *(EncoderLayer(config) for _ in range(config.n_cond_layers))
            )
        else:
            self.encoder = nn.Sequential(nn.Linear(d, 4 * d), nn.Mish(), nn.Linear(4 * d, d))
        self.decoder = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.output_dim * patch)
        init_linear_normal(self)
        nn.init.normal_(self.pos_emb, std=0.02)
        nn.init.normal_(self.cond_pos_emb, std=0.02)
        if config.causal_attn:
            steps = torch.arange(config.horizon)
            cond_index = torch.arange(config.n_cond_tokens)
            self.register_buffer(
                "self_mask", steps[:, None] >= steps[None, :], persistent=False
            )  # [T, T]
            self.register_buffer(
                "memory_mask", cond_index[None, :] <= steps[:, None] + 2, persistent=False
            )  # [T, To+2]
        else:
            self.self_mask = None
            self.memory_mask = None

    def features(self, sample: Tensor, r: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """LayerNorm'd decoder output at the action tokens, `[B, T / action_patch, D]`."""
        check_backbone_inputs(self.config, sample, r, t, cond)
        batch = sample.shape[0]
        cond_tokens = torch.cat(
            [self.time_emb(r)[:, None], self.time_emb(t)[:, None], self.cond_obs_emb(cond)], 1
        )
        memory = self.encoder(self.drop(cond_tokens + self.cond_pos_emb))  # [B, To+2, D]
        patches = sample.reshape(batch, -1, self.config.action_patch * sample.shape[2])
        x = self.drop(self.input_emb(patches) + self.pos_emb)  # [B, T / patch, D]
        self_mask = memory_mask = None
        if self.self_mask is not None and self.memory_mask is not None:
            self_mask = self.self_mask.expand(batch, -1, -1)
            memory_mask = self.memory_mask.expand(batch, -1, -1)
        for layer in self.decoder:
            x = layer(x, memory, self_mask, memory_mask)
        return self.ln_f(x)

    def forward(self, sample: Tensor, r: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        out = self.head(self.features(sample, r, t, cond))  # [B, T / patch, patch·Da]
        return out.reshape(sample.shape[0], sample.shape[1], -1)
