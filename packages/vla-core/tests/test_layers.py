"""Pins the Gemma building blocks: RMSNorm / AdaRMS formulas, RoPE (openpi split-half, relative
positions), and the cumsum block-causal mask rule."""

import torch

from vla_core.layers import RMSNorm, apply_rope, rope_cos_sin
from vla_core.masks import BlockCausalMask
from vla_core.pi0 import posemb_sincos


def test_rmsnorm_formula_and_adarms_zero_init() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8)
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8))
    expected = (
        x / torch.sqrt((x.double() ** 2).mean(-1, keepdim=True) + 1e-6) * (1 + norm.weight.double())
    )
    out, gate = norm(x)
    assert gate is None and (out - expected).abs().max() <= 1e-6

    ada = RMSNorm(8, cond_dim=4)
    cond = torch.randn(2, 4)
    out, gate = ada(x, cond)
    plain = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6)
    assert torch.equal(gate, torch.zeros(2, 1, 8)) and (out - plain).abs().max() <= 1e-6
    with torch.no_grad():
        ada.dense.weight.normal_()
        ada.dense.bias.normal_()
    out, gate = ada(x, cond)
    scale, shift, gate_ref = ada.dense(cond).unsqueeze(1).chunk(3, -1)
    assert (out - (plain * (1 + scale) + shift)).abs().max() <= 1e-5
    assert torch.equal(gate, gate_ref)
    # Per-token cond [B, L, C] equals the per-sample cond broadcast over L.
    out_token, _ = ada(x, cond[:, None].expand(2, 3, 4))
    assert (out_token - out).abs().max() <= 1e-6


def test_rope_matches_split_half_formula_and_is_relative() -> None:
    torch.manual_seed(0)
    head_dim = 8
    positions = torch.tensor([[0, 1, 5, 9]])
    cos, sin = rope_cos_sin(positions, head_dim)
    x = torch.randn(1, 4, 2, head_dim)
    out = apply_rope(x, cos, sin)
    timescale = 10_000.0 ** (2.0 * torch.arange(4, dtype=torch.float64) / head_dim)
    angle = positions[0, 2].double() / timescale
    x1, x2 = x[0, 2, 0, :4].double(), x[0, 2, 0, 4:].double()
    expected = torch.cat([x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()])
    assert (out[0, 2, 0].double() - expected).abs().max() <= 1e-6
    # <rope(q, m), rope(k, n)> depends only on m - n.
    q, k = torch.randn(head_dim), torch.randn(head_dim)

    def score(m, n):
        c, s = rope_cos_sin(torch.tensor([[m, n]]), head_dim)
        rotated = apply_rope(torch.stack([q, k])[None, :, None], c, s)[0, :, 0]
        return (rotated[0] * rotated[1]).sum()

    assert abs(score(7, 3) - score(104, 100)) <= 1e-4
    assert abs(score(7, 3) - score(3, 7)) > 1e-3


def test_block_causal_mask_cumsum_rule() -> None:
    # pi0 layout: 3 prefix tokens (last one padding), state token, 2 action tokens.
    pad = torch.tensor([[1, 1, 0, 1, 1, 1]], dtype=torch.bool)
    ar = torch.tensor([[0, 0, 0, 1, 1, 0]], dtype=torch.bool)
    dense = BlockCausalMask.from_ar(pad, ar).dense()[0].int()
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],  # prefix: bidirectional among valid prefix tokens
            [1, 1, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],  # padding query sees nothing
            [1, 1, 0, 1, 0, 0],  # state: prefix + itself
            [1, 1, 0, 1, 1, 1],  # actions: prefix + state + all actions
            [1, 1, 0, 1, 1, 1],
        ]
    )
    assert torch.equal(dense, expected)
    suffix_only = BlockCausalMask.from_ar(pad, ar, num_queries=3).dense()[0].int()
    assert torch.equal(suffix_only, expected[3:])


def test_time_embedding_matches_openpi_formula() -> None:
    time = torch.tensor([0.0, 0.37, 1.0])
    emb = posemb_sincos(time, 8, 4e-3, 4.0, "exact")
    fraction = torch.linspace(0, 1, 4, dtype=torch.float64)
    period = 4e-3 * (4.0 / 4e-3) ** fraction
    angle = time.double()[:, None] * 2 * torch.pi / period
    assert (emb.double() - torch.cat([angle.sin(), angle.cos()], -1)).abs().max() <= 1e-7
