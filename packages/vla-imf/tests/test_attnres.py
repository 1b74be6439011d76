"""Pins the AttnRes backbones to the independent PyPI `attn-res` 0.1.0 implementation.

Weights are copied into its non-causal sublayer stack (`_forward_full_attnres` /
`_forward_block_attnres` with `mask=None`); q/k rows are permuted from our rotate-half RoPE
layout to its interleaved-pair layout. Pseudo-queries and norm weights are perturbed first.
Tolerance: fp32, max abs error ≤ 1e-5.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from attn_res.main import AttnResMode, AttnResTransformer, TransformerConfig

from vla_imf import AttnResBackbone, AttnResOperator
from vla_imf._testing import tiny_backbone_config


def _rotate_half_to_interleaved(head_dim: int) -> torch.Tensor:
    """Our channel j pairs with j + d/2; theirs 2j with 2j+1: our row i = their row perm[i]."""
    half = head_dim // 2
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])[: 2 * half]


def _perturb(model: AttnResBackbone) -> None:
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("pseudo_query") or name.endswith("norm.weight"):
                param.add_(0.5 * torch.randn(param.shape, generator=gen))
            if name.endswith(("w_q.weight", "w_k.weight")):
                param.mul_(10.0)  # sharp attention, so RoPE / head mapping errors show


def _reference(model: AttnResBackbone) -> AttnResTransformer:
    cfg = model.config
    mode = AttnResMode.FULL if cfg.kind == "attnres_full" else AttnResMode.BLOCK
    n_sub = 2 * cfg.n_layer
    ref_cfg = TransformerConfig(
        d_model=cfg.n_emb,
        n_layers=n_sub,
        n_heads=cfg.n_head,
        n_kv_heads=cfg.n_kv_head,
        vocab_size=8,
        max_seq_len=64,
        ffn_mult=cfg.ffn_mult,
        dropout=0.0,
        attn_res_mode=mode,
        n_blocks=n_sub // cfg.attnres_block_size,
        eps=cfg.eps,
        rope_theta=cfg.rope_theta,
    )
    if mode == AttnResMode.BLOCK:
        assert ref_cfg.block_size == cfg.attnres_block_size
    ref = AttnResTransformer(ref_cfg)
    head_dim = cfg.n_emb // cfg.n_head
    perm = _rotate_half_to_interleaved(head_dim)
    with torch.no_grad():
        for ours, theirs in zip(model.layers, ref.layers, strict=True):
            theirs.attn_res.pseudo_query.copy_(ours.attn_res.pseudo_query)
            theirs.norm.weight.copy_(ours.norm.weight)
            if ours.is_attention:
                assert theirs.is_attention
                # our row (head, j) holds their row (head, perm[j]): theirs = ours un-permuted
                for name, heads in (("w_q", cfg.n_head), ("w_k", cfg.n_kv_head)):
                    w = getattr(ours.fn, name).weight.view(heads, head_dim, cfg.n_emb)
                    unpermuted = torch.empty_like(w)
                    unpermuted[:, perm] = w
                    getattr(theirs.fn, name).weight.copy_(unpermuted.reshape(-1, cfg.n_emb))
                theirs.fn.w_v.weight.copy_(ours.fn.w_v.weight)
                theirs.fn.w_o.weight.copy_(ours.fn.w_o.weight)
            else:
                for name in ("w_gate", "w_up", "w_down"):
                    getattr(theirs.fn, name).weight.copy_(getattr(ours.fn, name).weight)
    return ref.eval()


@pytest.mark.parametrize(
    ("kind", "n_kv_head", "block_size", "implementation"),
    [
        ("attnres_full", 1, 1, "sdpa"),
        ("attnres_full", 2, 1, "eager"),
        ("attnres_full", 4, 1, "sdpa"),
        ("attnres_block", 1, 2, "sdpa"),
        ("attnres_block", 2, 3, "eager"),
    ],
)
def test_trunk_matches_attn_res_reference(
    kind: str, n_kv_head: int, block_size: int, implementation: str
) -> None:
    torch.manual_seed(0)
    cfg = tiny_backbone_config(
        kind,
        n_layer=3,
        n_emb=32,
        n_kv_head=n_kv_head,
        attnres_block_size=block_size,
        attention_implementation=implementation,
    )
    model = AttnResBackbone(cfg).eval()
    _perturb(model)
    ref = _reference(model)
    x = torch.randn(3, 9, cfg.n_emb)
    rope = ref.rope_freqs[: x.shape[1]]
    with torch.no_grad():
        ours = model.trunk(x)
        if kind == "attnres_full":
            theirs = ref._forward_full_attnres(x, rope, None)
        else:
            theirs = ref._forward_block_attnres(x, rope, None)
        err = (ours - theirs).abs().max().item()
        assert err <= 1e-5, err
        # The output norm is the same op too.
        ref.out_norm.weight.copy_(model.norm_out.weight)
        assert torch.allclose(model.norm_out(ours), ref.out_norm(theirs), atol=1e-5)


def test_reference_comparison_is_sensitive_to_rope_layout() -> None:
    """Copying q/k rows without the permutation must break the match (the check can fail)."""
    torch.manual_seed(1)
    model = AttnResBackbone(tiny_backbone_config("attnres_full", n_emb=32)).eval()
    _perturb(model)
    ref = _reference(model)
    with torch.no_grad():
        for ours, theirs in zip(model.layers, ref.layers):
            if ours.is_attention:
                theirs.fn.w_q.weight.copy_(ours.fn.w_q.weight)
                theirs.fn.w_k.weight.copy_(ours.fn.w_k.weight)
        x = torch.randn(2, 9, 32)
        err = (model.trunk(x) - ref._forward_full_attnres(x, ref.rope_freqs[:9], None)).abs().max()
    assert err.item() > 1e-3


def test_zero_init_aggregation_is_the_plain_mean() -> None:
    torch.manual_seed(2)
    model = AttnResBackbone(tiny_backbone_config("attnres_full"))
    assert all(
        float(layer.attn_res.pseudo_query.detach().abs().max()) == 0 for layer in model.layers
    )
    sources = (
        torch.randn(5, 2, 7, 16) * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0])[:, None, None, None]
    )
    op = model.layers[0].attn_res
    assert torch.allclose(op(sources), sources.mean(0), atol=1e-6)
    weights = op.weights(sources)
    assert torch.allclose(weights, torch.full_like(weights, 1 / 5))
    # A non-zero query makes the weights depend on the (RMS-normalised) sources.
    with torch.no_grad():
        op.pseudo_query.normal_()
    assert not torch.allclose(op(sources), sources.mean(0), atol=1e-3)
    # Passing the cached per-source inverse RMS gives the same weights.
    inv_rms = torch.rsqrt(sources.pow(2).mean(-1) + op.eps)
    assert torch.allclose(op.weights(sources, inv_rms), op.weights(sources), atol=1e-6)
    # Keys are RMS-normalised without a weight and without 1/sqrt(d): scaling a source leaves
    # its logit unchanged.
    scaled = sources.clone()
    scaled[1] *= 100.0
    assert torch.allclose(op.weights(sources), op.weights(scaled), atol=1e-6)


def test_first_step_of_the_stack_sees_uniform_weights() -> None:
    """At init, sublayer l aggregates its l sources with weight 1/l each."""
    torch.manual_seed(3)
    model = AttnResBackbone(tiny_backbone_config("attnres_full")).eval()
    seen: list[torch.Tensor] = []
    hooks = [
        layer.attn_res.register_forward_hook(
            lambda mod, args, out: seen.append(mod.weights(args[0]))
        )
        for layer in model.layers
    ]
    with torch.no_grad():
        model(torch.randn(2, 4, 2), torch.rand(2), torch.rand(2), torch.randn(2, 2, 3))
    for hook in hooks:
        hook.remove()
    assert [w.shape[0] for w in seen] == list(range(1, 2 * model.config.n_layer + 1))
    for weights in seen:
        assert torch.allclose(weights, torch.full_like(weights, 1 / weights.shape[0]))


def test_block_size_one_equals_full_attnres() -> None:
    torch.manual_seed(4)
    full_cfg = tiny_backbone_config("attnres_full", n_layer=3)
    full = AttnResBackbone(full_cfg).eval()
    _perturb(full)
    block = AttnResBackbone(
        dataclasses.replace(full_cfg, kind="attnres_block", attnres_block_size=1)
    )
    block.load_state_dict(full.state_dict())
    block.eval()
    args = (torch.randn(2, 4, 2), torch.rand(2), torch.rand(2), torch.randn(2, 2, 3))
    with torch.no_grad():
        assert torch.allclose(full(*args), block(*args), atol=1e-6)
        wide = AttnResBackbone(dataclasses.replace(block.config, attnres_block_size=3))
        wide.load_state_dict(full.state_dict())
        assert not torch.allclose(full(*args), wide.eval()(*args), atol=1e-4)


def test_token_order_and_action_only_output() -> None:
    torch.manual_seed(5)
    model = AttnResBackbone(tiny_backbone_config("attnres_full")).eval()
    sample, r, t, cond = torch.randn(2, 4, 2), torch.rand(2), torch.rand(2), torch.randn(2, 2, 3)
    with torch.no_grad():
        tokens = model.embed(sample, r, t, cond)
        assert tokens.shape == (2, 2 + 2 + 4, 16)
        assert torch.allclose(tokens[:, 0], model.time_token_proj(model.time_emb(r)))
        assert torch.allclose(tokens[:, 1], model.time_token_proj(model.time_emb(t)))
        assert torch.allclose(tokens[:, 2:4], model.cond_obs_emb(cond))
        assert torch.allclose(tokens[:, 4:], model.input_emb(sample))
        out = model(sample, r, t, cond)
        assert out.shape == sample.shape
        # Non-causal: the first action depends on the last action; u depends on r and on t.
        moved = sample.clone()
        moved[:, -1] += 1.0
        assert not torch.allclose(model(moved, r, t, cond)[:, 0], out[:, 0])
        assert not torch.allclose(model(sample, r * 0.5, t, cond), out)
        assert not torch.allclose(model(sample, r, t * 0.5, cond), out)


def test_backbone_rejects_bad_shapes() -> None:
    model = AttnResBackbone(tiny_backbone_config("attnres_full"))
    good = (torch.randn(2, 4, 2), torch.rand(2), torch.rand(2), torch.randn(2, 2, 3))
    with pytest.raises(ValueError, match="sample"):
        model(torch.randn(2, 5, 2), *good[1:])
    with pytest.raises(ValueError, match="r must be"):
        model(good[0], torch.rand(3), good[2], good[3])
    with pytest.raises(ValueError, match="floating point"):
        model(good[0], good[1], torch.ones(2, dtype=torch.long), good[3])
    with pytest.raises(ValueError, match="cond"):
        model(*good[:3], torch.randn(2, 3, 3))
    with pytest.raises(ValueError, match="attnres kind"):
        AttnResBackbone(tiny_backbone_config("vanilla"))


def test_operator_standalone() -> None:
    op = AttnResOperator(8)
    assert op.pseudo_query.shape == (8,)
    assert float(op.pseudo_query.detach().abs().sum()) == 0.0


@pytest.mark.parametrize("backbone", ["attnres_full", "vanilla"])
@pytest.mark.parametrize("tangent_source", ["boundary", "v_head"])
def test_action_patches_group_steps_into_tokens(tangent_source: str, backbone: str) -> None:
    """`action_patch=p`: p consecutive steps share a token, so a step's output sees the other
    steps of its patch only through that token; shapes, the loss and sampling are unchanged."""
    from vla_imf import IMFPolicy
    from vla_imf._testing import pusht_stats, random_batch, tiny_policy_config

    torch.manual_seed(0)
    config = tiny_policy_config(backbone=backbone, action_patch=4, tangent_source=tangent_source)
    policy = IMFPolicy(config)
    policy.fit_normalizer(pusht_stats(config))
    backbone = policy.backbone
    assert backbone.input_emb.in_features == 4 * config.action_dim
    assert backbone.head.out_features == 4 * config.action_dim
    batch = random_batch(config, batch=3, generator=torch.Generator().manual_seed(1))
    loss = policy.compute_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and backbone.input_emb.weight.grad is not None
    out = policy.predict_action({k: v for k, v in batch.items() if k.startswith("observation")})
    assert out["action"].shape == (3, config.n_action_steps, config.action_dim)
    # 8 steps / patch 4 = 2 action tokens.
    z = torch.randn(1, config.horizon, config.action_dim)
    cond = torch.randn(1, config.n_obs_steps, config.cond_dim)
    features = backbone.features(z, torch.zeros(1), torch.ones(1), cond)
    assert features.shape[1] == config.horizon // 4
    # A step's output depends on the other steps of its own patch (they share a token).
    z2 = z.clone()
    z2[:, 1] += 1.0
    with torch.no_grad():
        delta = (
            backbone(z2, torch.zeros(1), torch.ones(1), cond)
            - backbone(z, torch.zeros(1), torch.ones(1), cond)
        ).abs()
    assert delta[:, 0].sum() > 0
