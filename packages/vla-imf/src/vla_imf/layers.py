"""Small building blocks shared by the backbones: norms, time embedding, RoPE, GQA, SwiGLU.

Every op here has a forward-mode-AD formula (no fused kernels), so `torch.func.jvp` can run
through the backbones; attention itself is delegated to `vla_core.attention.attend`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla_core.attention import attend


def rms_normalize(x: Tensor, eps: float) -> Tensor:
    """`x / sqrt(mean(x²) + eps)` over the last axis, computed in at least fp32."""
    compute_dtype = torch.promote_types(x.dtype, torch.float32)
    xc = x.to(compute_dtype)
    return (xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def inverse_rms(x: Tensor, eps: float) -> Tensor:
    """`rsqrt(mean(x²) + eps)` over the last axis (dropped), computed in at least fp32."""
    compute_dtype = torch.promote_types(x.dtype, torch.float32)
    return torch.rsqrt(x.to(compute_dtype).pow(2).mean(-1) + eps).to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm with a learned per-channel weight (initialised to 1)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_normalize(x, self.eps) * self.weight


class SinusoidalTimeEmbedding(nn.Module):
    """diffusion_policy's `SinusoidalPosEmb` for *float* times: `[sin(s·t·f_k), cos(s·t·f_k)]`.

    `f_k = exp(-k·ln(1e4)/(half-1))`; times stay float and differentiable (no `.long()`), which
    the JVP in the iMF loss needs. `scale` multiplies t before the embedding.
    """

    freqs: Tensor

    def __init__(self, dim: int, scale: float = 1.0) -> None:
        super().__init__()
        half = dim // 2
        exponent = -math.log(10000.0) / max(half - 1, 1)
        freqs = torch.exp(torch.arange(half, dtype=torch.float64) * exponent)
        self.register_buffer("freqs", freqs.float(), persistent=False)
        self.scale = scale

    def forward(self, t: Tensor) -> Tensor:  # [B] -> [B, dim]
        angles = (t * self.scale)[:, None] * self.freqs.to(t.dtype)[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def rope_cos_sin(
    head_dim: int, seq_len: int, theta: float, *, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Rotate-half RoPE tables `[L, head_dim]`: frequency `theta^(-2i/d)` at channels i and i+d/2."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim)
    )
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64, device=device), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + d/2) of `x [B, H, L, d]` by position (rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class GroupedQueryAttention(nn.Module):
    """Bias-free GQA with RoPE on q and k (`n_kv_head` key/value heads shared by `n_head` queries).

    Attention goes through `vla_core.attention.attend`, so the backend (`eager`/`sdpa`) is a
    knob. Dropout hits the attention *output* (after `w_o`).
    """

    def __init__(
        self,
        n_emb: int,
        n_head: int,
        n_kv_head: int,
        *,
        dropout: float = 0.0,
        implementation: str = "sdpa",
    ) -> None:
        super().__init__()
        self.n_head = n_head
        self.n_kv_head = n_kv_head
        self.head_dim = n_emb // n_head
        self.implementation = implementation
        self.w_q = nn.Linear(n_emb, n_head * self.head_dim, bias=False)
        self.w_k = nn.Linear(n_emb, n_kv_head * self.head_dim, bias=False)
        self.w_v = nn.Linear(n_emb, n_kv_head * self.head_dim, bias=False)
        self.w_o = nn.Linear(n_head * self.head_dim, n_emb, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None = None) -> Tensor:
        batch, length, _ = x.shape  # [B, L, D]
        q = self.w_q(x).view(batch, length, self.n_head, self.head_dim).transpose(1, 2)
        k = self.w_k(x).view(batch, length, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.w_v(x).view(batch, length, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = attend(
            q,
            k,
            v,
            mask,
            scale=1.0 / math.sqrt(self.head_dim),
            implementation=self.implementation,
        )  # [B, H, L, d]
        out = out.transpose(1, 2).reshape(batch, length, self.n_head * self.head_dim)
        return self.dropout(self.w_o(out))


def swiglu_hidden_dim(n_emb: int, ffn_mult: float) -> int:
    """`int(mult·d)` rounded up to a multiple of 8 (attn-res / LLaMA convention)."""
    raw = int(ffn_mult * n_emb)
    return ((raw + 7) // 8) * 8


class SwiGLU(nn.Module):
    """`w_down(silu(w_gate x) ⊙ w_up x)`, bias-free, dropout on the output."""

    def __init__(self, n_emb: int, ffn_mult: float, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = swiglu_hidden_dim(n_emb, ffn_mult)
        self.w_gate = nn.Linear(n_emb, hidden, bias=False)
        self.w_up = nn.Linear(n_emb, hidden, bias=False)
        self.w_down = nn.Linear(hidden, n_emb, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.w_down(F.silu(self.w_gate(x)) * self.w_up(x)))


def init_linear_normal(module: nn.Module, std: float = 0.02) -> None:
    """diffusion_policy / attn-res init: Linear and Embedding weights N(0, std), biases 0."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, mean=0.0, std=std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, mean=0.0, std=std)
