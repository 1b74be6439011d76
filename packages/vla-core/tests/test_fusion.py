"""Pins `vla_core.fusion`: a fused copy computes what its unfused source computes (fp32, tiny
configs, ≤ 1e-5 — measured bit-identical on CPU), which modules are fused, and that the loaded
weights are stacked in the documented order (q ‖ k ‖ v, gate ‖ up)."""

import copy

import pytest
import torch

from vla_core import PI0Model, gemma3_policy_config
from vla_core._testing import perturb_adarms, random_actions, random_observation, tiny_pi0_config
from vla_core.fusion import FusedAttentionProjections, FusedGemmaMLP, fuse_projections
from vla_core.layers import GemmaAttentionProjections, GemmaMLP


def _model(config, seed=0):
    torch.manual_seed(seed)
    model = PI0Model(config)
    perturb_adarms(model, std=0.1)
    return model


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_fused_copy_gives_the_same_loss_and_actions(variant) -> None:
    model = _model(tiny_pi0_config(variant, attention_implementation="sdpa"))
    fused = copy.deepcopy(model)
    depth = model.config.backbone.depth
    assert fuse_projections(fused) == 2 * 2 * depth  # (attention, mlp) x (backbone, expert) x depth
    assert not any(isinstance(m, (GemmaAttentionProjections, GemmaMLP)) for m in fused.modules())
    obs = random_observation(model.config)
    actions = random_actions(model.config)
    noise, time = torch.randn_like(actions), torch.tensor([0.3, 0.8])
    torch.testing.assert_close(
        fused(obs, actions, noise, time), model(obs, actions, noise, time), rtol=0, atol=1e-5
    )
    with torch.no_grad():
        expected = model.eval().sample_actions(obs, noise=noise, num_steps=3)
        got = fused.eval().sample_actions(obs, noise=noise, num_steps=3)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_stacked_weights_and_split_outputs() -> None:
    torch.manual_seed(0)
    config = tiny_pi0_config("pi0").expert
    attention = GemmaAttentionProjections(config)
    fused = FusedAttentionProjections(attention)
    assert torch.equal(
        fused.qkv_proj.weight,
        torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]),
    )
    assert fused.o_proj is attention.o_proj
    x = torch.randn(2, 3, config.width)
    for got, expected in zip(fused.project_qkv(x), attention.project_qkv(x)):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    mlp = GemmaMLP(config.width, config.mlp_dim)
    fused_mlp = FusedGemmaMLP(mlp)
    assert torch.equal(
        fused_mlp.gate_up_proj.weight, torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
    )
    torch.testing.assert_close(fused_mlp(x), mlp(x), rtol=0, atol=1e-6)


def test_bf16_weights_stay_bf16_and_switches_select_modules() -> None:
    model = _model(tiny_pi0_config("pi05", dtype="bfloat16"))
    assert fuse_projections(model, attention=False) == 4
    assert all(
        isinstance(m, GemmaAttentionProjections)
        for layer in model.engine.layers
        for m in (layer.backbone.self_attn, layer.expert.self_attn)
    )
    fused_mlp = model.engine.layers[0].expert.mlp
    assert (
        isinstance(fused_mlp, FusedGemmaMLP)
        and fused_mlp.gate_up_proj.weight.dtype == torch.bfloat16
    )


def test_gemma3_backbone_keeps_its_normed_projections() -> None:
    """Gemma-3 attention (q/k norms) is a subclass and stays unfused; its MLPs and the Gemma expert
    are fused, and the velocity is unchanged."""
    config = gemma3_policy_config(
        "pi05", backbone="gemma3_tiny", expert="gemma3_tiny_expert", vision="siglip_tiny",
        action_dim=6, action_horizon=5, max_token_len=12, num_cameras=2,
    )  # fmt: skip
    model = _model(config).eval()
    fused = copy.deepcopy(model)
    depth = config.backbone.depth
    assert fuse_projections(fused) == 3 * depth  # backbone mlp + expert attention + expert mlp
    assert not isinstance(fused.engine.layers[0].backbone.self_attn, FusedAttentionProjections)
    obs = random_observation(config)
    x_t = torch.randn(2, 5, 6)
    with torch.no_grad():
        expected = model.predict_velocity(obs, x_t, torch.tensor([0.3, 0.8]), mode="cached")
        got = fused.predict_velocity(obs, x_t, torch.tensor([0.3, 0.8]), mode="cached")
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
