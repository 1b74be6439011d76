"""Pins the vanilla backbone to torch's own `nn.TransformerDecoderLayer` / `EncoderLayer`
(norm_first, GELU, 4× FF, batch_first), which diffusion_policy's TransformerForDiffusion uses.

Weights are copied (in_proj split into q/k/v); the whole forward is rebuilt from torch layers
following transformer_for_diffusion.py with two time tokens. fp32, max abs error ≤ 1e-5.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vla_imf import VanillaBackbone
from vla_imf._testing import tiny_backbone_config
from vla_imf.vanilla import DecoderLayer, EncoderLayer, MultiHeadAttention


def _copy_attention(ours: MultiHeadAttention, theirs: nn.MultiheadAttention) -> None:
    with torch.no_grad():
        q, k, v = theirs.in_proj_weight.chunk(3)
        qb, kb, vb = theirs.in_proj_bias.chunk(3)
        for proj, w, b in ((ours.q_proj, q, qb), (ours.k_proj, k, kb), (ours.v_proj, v, vb)):
            proj.weight.copy_(w)
            proj.bias.copy_(b)
        ours.out_proj.weight.copy_(theirs.out_proj.weight)
        ours.out_proj.bias.copy_(theirs.out_proj.bias)


def _copy_common(ours: EncoderLayer | DecoderLayer, theirs: nn.Module) -> None:
    with torch.no_grad():
        ours.ff.linear1.load_state_dict(theirs.linear1.state_dict())
        ours.ff.linear2.load_state_dict(theirs.linear2.state_dict())
        for name in ("norm1", "norm2", "norm3"):
            if hasattr(ours, name):
                getattr(ours, name).load_state_dict(getattr(theirs, name).state_dict())
    _copy_attention(ours.self_attn, theirs.self_attn)
    if isinstance(ours, DecoderLayer):
        _copy_attention(ours.cross_attn, theirs.multihead_attn)


def _torch_layer(kind: type, d: int, heads: int) -> nn.Module:
    layer = kind(d, heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
    with torch.no_grad():
        for p in layer.parameters():  # non-trivial norms and biases
            p.add_(0.1 * torch.randn_like(p))
    return layer.eval()


def _randomize(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_layers_match_torch_transformer_layers(implementation: str) -> None:
    torch.manual_seed(0)
    cfg = tiny_backbone_config("vanilla", n_emb=32, attention_implementation=implementation)
    dec_ref = _torch_layer(nn.TransformerDecoderLayer, 32, 4)
    dec = DecoderLayer(cfg).eval()
    _copy_common(dec, dec_ref)
    enc_ref = _torch_layer(nn.TransformerEncoderLayer, 32, 4)
    enc = EncoderLayer(cfg).eval()
    _copy_common(enc, enc_ref)
    x, memory = torch.randn(3, 6, 32), torch.randn(3, 5, 32)
    self_mask = torch.tril(torch.ones(6, 6, dtype=torch.bool))
    memory_mask = torch.arange(5)[None, :] <= torch.arange(6)[:, None] + 2
    with torch.no_grad():
        ours = dec(x, memory, self_mask.expand(3, -1, -1), memory_mask.expand(3, -1, -1))
        theirs = dec_ref(x, memory, tgt_mask=~self_mask, memory_mask=~memory_mask)
        assert (ours - theirs).abs().max().item() <= 1e-5
        ours = dec(x, memory, None, None)
        assert (ours - dec_ref(x, memory)).abs().max().item() <= 1e-5
        assert (enc(memory) - enc_ref(memory)).abs().max().item() <= 1e-5


def _reference_forward(
    model: VanillaBackbone,
    decoder: nn.TransformerDecoder,
    encoder: nn.Module,
    sample: torch.Tensor,
    r: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
) -> torch.Tensor:
    """transformer_for_diffusion.py's forward (time_as_cond, obs_as_cond) with two time tokens."""
    cfg = model.config
    cond_emb = torch.cat(
        [model.time_emb(r)[:, None], model.time_emb(t)[:, None], model.cond_obs_emb(cond)], 1
    )
    memory = encoder(cond_emb + model.cond_pos_emb)
    x = model.input_emb(sample) + model.pos_emb
    tgt_mask = memory_mask = None
    if cfg.causal_attn:
        steps = torch.arange(cfg.horizon)
        tgt_mask = torch.where(steps[:, None] >= steps[None, :], 0.0, float("-inf"))
        cond_index = torch.arange(cfg.n_cond_tokens)
        memory_mask = torch.where(steps[:, None] >= cond_index[None, :] - 2, 0.0, float("-inf"))
    x = decoder(x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask)
    return model.head(model.ln_f(x))


@pytest.mark.parametrize(("causal", "n_cond_layers"), [(False, 0), (True, 0), (True, 2)])
def test_backbone_matches_torch_reference(causal: bool, n_cond_layers: int) -> None:
    torch.manual_seed(1)
    cfg = tiny_backbone_config(
        "vanilla", n_emb=32, n_layer=2, causal_attn=causal, n_cond_layers=n_cond_layers
    )
    model = VanillaBackbone(cfg).eval()
    _randomize(model)
    decoder = nn.TransformerDecoder(_torch_layer(nn.TransformerDecoderLayer, 32, 4), 2).eval()
    for ours, theirs in zip(model.decoder, decoder.layers, strict=True):
        _copy_common(ours, theirs)
    if n_cond_layers:
        encoder: nn.Module = nn.TransformerEncoder(
            _torch_layer(nn.TransformerEncoderLayer, 32, 4),
            n_cond_layers,
            enable_nested_tensor=False,
        ).eval()
        for ours, theirs in zip(model.encoder, encoder.layers, strict=True):
            _copy_common(ours, theirs)
    else:
        encoder = model.encoder
    args = (torch.randn(3, 4, 2), torch.rand(3), torch.rand(3), torch.randn(3, 2, 3))
    with torch.no_grad():
        err = (model(*args) - _reference_forward(model, decoder, encoder, *args)).abs().max()
    assert err.item() <= 1e-5


def test_causal_mask_limits_what_each_action_sees() -> None:
    torch.manual_seed(2)
    model = VanillaBackbone(tiny_backbone_config("vanilla", causal_attn=True)).eval()
    _randomize(model)
    sample, r, t, cond = torch.randn(2, 4, 2), torch.rand(2), torch.rand(2), torch.randn(2, 2, 3)
    with torch.no_grad():
        base = model(sample, r, t, cond)
        later_action = sample.clone()
        later_action[:, 2:] += 1.0
        out = model(later_action, r, t, cond)
        assert torch.allclose(out[:, :2], base[:, :2], atol=1e-6)
        assert not torch.allclose(out[:, 2:], base[:, 2:], atol=1e-4)
        later_obs = cond.clone()
        later_obs[:, 1] += 1.0  # obs step 1 is cond token 3: visible from action 1 on
        out = model(sample, r, t, later_obs)
        assert torch.allclose(out[:, 0], base[:, 0], atol=1e-6)
        assert not torch.allclose(out[:, 1:], base[:, 1:], atol=1e-4)
        # Both time tokens reach the first action.
        assert not torch.allclose(model(sample, r * 0.3, t, cond)[:, 0], base[:, 0], atol=1e-5)
        assert not torch.allclose(model(sample, r, t * 0.3, cond)[:, 0], base[:, 0], atol=1e-5)
