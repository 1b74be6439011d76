"""Full / Block Attention-Residual transformer over `[r, t, obs…, action…]` tokens (the seed).

Each sublayer's input is a softmax over depth of earlier representations (arXiv 2603.15031):
`h_l = Σ_i softmax_i(w_lᵀ rms(v_i)) · v_i`, with one zero-initialised pseudo-query `w_l` per
sublayer, weightless key RMS norm and no 1/√d. Sublayers alternate GQA (RoPE) and SwiGLU, each
with its own RMSNorm pre-norm. The trunk output is the plain sum of all sources, matching the
PyPI `attn-res` 0.1.0 reference (`attn_res/main.py`) with its causal mask removed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vla_imf._checks import check_backbone_inputs
from vla_imf.backbone_config import AttnResBackboneConfig
from vla_imf.layers import (
    GroupedQueryAttention,
    RMSNorm,
    SinusoidalTimeEmbedding,
    SwiGLU,
    init_linear_normal,
    inverse_rms,
    rope_cos_sin,
)


class AttnResOperator(nn.Module):
    """Softmax over the source (depth) axis with an input-independent pseudo-query.

    `w · rms(v) = (w · v) · rsqrt(mean(v²) + eps)`: callers that keep the per-source inverse RMS
    (`[N, B, L]`, computed once per source) pass it as `inv_rms` and skip re-normalising every
    source at every sublayer.
    """

    def __init__(self, n_emb: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.pseudo_query = nn.Parameter(torch.zeros(n_emb))

    def weights(self, sources: Tensor, inv_rms: Tensor | None = None) -> Tensor:
        """`[N, B, L, D]` (+ optional `[N, B, L]` inverse RMS) -> softmax weights `[N, B, L]`."""
        if inv_rms is None:
            inv_rms = inverse_rms(sources, self.eps)
        query = self.pseudo_query.to(sources.dtype)
        # A matrix-vector product and a broadcast sum: ~3x faster on CPU than the equivalent
        # einsums, which lower to batched matmuls of 1×N blocks.
        logits = torch.matmul(sources, query) * inv_rms.to(sources.dtype)
        return torch.softmax(logits, dim=0)

    def forward(self, sources: Tensor, inv_rms: Tensor | None = None) -> Tensor:
        return (self.weights(sources, inv_rms).unsqueeze(-1) * sources).sum(0)


class AttnResSubLayer(nn.Module):
    """`f(RMSNorm(AttnRes(sources)))` with f = GQA (even index) or SwiGLU (odd index).

    This is the unit that gradient checkpointing wraps.
    """

    def __init__(self, config: AttnResBackboneConfig, is_attention: bool) -> None:
        super().__init__()
        self.is_attention = is_attention
        self.attn_res = AttnResOperator(config.n_emb, config.eps)
        self.norm = RMSNorm(config.n_emb, config.eps)
        self.fn: nn.Module
        if is_attention:
            self.fn = GroupedQueryAttention(
                config.n_emb,
                config.n_head,
                config.n_kv_head,
                dropout=config.p_drop_attn,
                implementation=config.attention_implementation,
            )
        else:
            self.fn = SwiGLU(config.n_emb, config.ffn_mult, dropout=config.p_drop_attn)

    def forward(
        self, sources: Tensor, cos: Tensor, sin: Tensor, inv_rms: Tensor | None = None
    ) -> Tensor:
        h = self.norm(self.attn_res(sources, inv_rms))  # [B, L, D]
        if self.is_attention:
            return self.fn(h, cos, sin)
        return self.fn(h)


class AttnResBackbone(nn.Module):
    """`u_θ(sample [B,T,Da], r [B], t [B], cond [B,To,Dc]) -> [B,T,Da]`, non-causal.

    `kind="attnres_full"` aggregates the embedding and every earlier sublayer output;
    `kind="attnres_block"` aggregates completed block sums plus the running partial sum of the
    current block (`attnres_block_size` sublayers per block; size 1 equals Full AttnRes).
    """

    def __init__(self, config: AttnResBackboneConfig) -> None:
        super().__init__()
        if not isinstance(config, AttnResBackboneConfig):
            raise ValueError(
                f"AttnResBackbone needs an attnres kind (AttnResBackboneConfig), got {config!r}"
            )
        self.config = config
        d = config.n_emb
        self.time_emb = SinusoidalTimeEmbedding(d, config.time_scale)
        self.time_token_proj = nn.Linear(d, d)  # shared by r and t
        self.cond_obs_emb = nn.Linear(config.cond_dim, d)
        patch = config.action_patch
        self.input_emb = nn.Linear(config.input_dim * patch, d)
        self.drop = nn.Dropout(config.p_drop_emb)
        self.layers = nn.ModuleList(
            AttnResSubLayer(config, is_attention=(i % 2 == 0)) for i in range(2 * config.n_layer)
        )
        self.norm_out = RMSNorm(d, config.eps)
        self.head = nn.Linear(d, config.output_dim * patch)
        init_linear_normal(self)

    def embed(self, sample: Tensor, r: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Token sequence `[r, t, obs_1..obs_To, act_1..act_T]` -> `[B, 2+To+T, D]`."""
        r_token = self.time_token_proj(self.time_emb(r))[:, None]
        t_token = self.time_token_proj(self.time_emb(t))[:, None]
        # `action_patch` consecutive steps share one token (ViT-style patches along time).
        patches = sample.reshape(sample.shape[0], -1, self.config.action_patch * sample.shape[2])
        tokens = torch.cat([r_token, t_token, self.cond_obs_emb(cond), self.input_emb(patches)], 1)
        return self.drop(tokens)

    def trunk(self, x: Tensor) -> Tensor:
        """Run the AttnRes stack on embedded tokens `[B, L, D]`; returns the sum of all sources."""
        cos, sin = rope_cos_sin(
            self.config.n_emb // self.config.n_head,
            x.shape[1],
            self.config.rope_theta,
            dtype=x.dtype,
            device=x.device,
        )
        eps = self.config.eps
        if self.config.kind == "attnres_full":
            sources, scales = [x], [inverse_rms(x, eps)]  # values and their inverse RMS
            for layer in self.layers:
                out = layer(torch.stack(sources), cos, sin, torch.stack(scales))
                sources.append(out)
                scales.append(inverse_rms(out, eps))
            return torch.stack(sources).sum(0)
        block_size = self.config.attnres_block_size
        blocks: list[Tensor] = [x]  # b_0 = embedding, then completed block sums
        block_scales: list[Tensor] = [inverse_rms(x, eps)]
        partial: Tensor | None = None  # running sum of the current block's sublayer outputs
        for i, layer in enumerate(self.layers):
            if partial is None:
                current, current_scales = blocks, block_scales
            else:
                partial_scale = inverse_rms(partial, eps)
                current, current_scales = [*blocks, partial], [*block_scales, partial_scale]
            out = layer(torch.stack(current), cos, sin, torch.stack(current_scales))
            if i > 0 and i % block_size == 0 and partial is not None:
                blocks.append(partial)
                block_scales.append(partial_scale)
                partial = None
            partial = out if partial is None else partial + out
        assert partial is not None
        return torch.stack([*blocks, partial]).sum(0)

    def features(self, sample: Tensor, r: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Normalised trunk output at the action positions, `[B, T, D]`."""
        check_backbone_inputs(self.config, sample, r, t, cond)
        h = self.trunk(self.embed(sample, r, t, cond))
        return self.norm_out(h[:, -(sample.shape[1] // self.config.action_patch) :])

    def forward(self, sample: Tensor, r: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        out = self.head(self.features(sample, r, t, cond))  # [B, T/patch, patch·Da]
        return out.reshape(sample.shape[0], sample.shape[1], -1)
