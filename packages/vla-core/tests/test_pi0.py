"""Pins the pi0 / pi0.5 model: attention backends agree on the full two-stream path, joint pass ==
prefix cache + suffix pass, AdaRMS time dependence, flow-matching loss and Euler sampler semantics,
the image-token filter contract, dtype policy and the full-size parameter tree (openpi counts)."""

import pytest
import torch

from vla_core import PI0Config, PI0Model, flex_attention_available
from vla_core._testing import perturb_adarms, random_actions, random_observation, tiny_pi0_config

VARIANTS = ["pi0", "pi05"]


def _model(variant, implementation="eager", seed=0, **overrides):
    torch.manual_seed(seed)
    model = PI0Model(tiny_pi0_config(variant, attention_implementation=implementation, **overrides))
    if variant == "pi05":
        perturb_adarms(model, std=0.1)
    return model


def _velocity_inputs(config, seed=5):
    gen = torch.Generator().manual_seed(seed)
    x_t = torch.randn(2, config.action_horizon, config.action_dim, generator=gen)
    return x_t, torch.tensor([0.3, 0.8])


@pytest.mark.parametrize("variant", VARIANTS)
def test_backends_agree_on_the_full_two_stream_path(variant) -> None:
    """eager ≡ sdpa ≡ flex: batch 2, right-padded prompt, a missing camera, unequal prefix (2·16
    image + 12 text) and suffix (5 or 6) lengths; valid prefix rows and velocities ≤ 1e-5."""
    reference = _model(variant, "eager")
    config = reference.config
    obs = random_observation(config, camera_present=[[True, True], [True, False]])
    x_t, time = _velocity_inputs(config)
    implementations = ["sdpa"] + (["flex"] if flex_attention_available() else [])
    with torch.no_grad():
        ref_prefix = reference.embed_prefix(obs)
        ref_cache_out = reference.engine(
            ref_prefix.tokens,
            None,
            pad_mask=ref_prefix.pad_mask,
            ar_mask=ref_prefix.ar_mask,
            positions=ref_prefix.positions,
        ).prefix
        ref_v = {
            mode: reference.predict_velocity(obs, x_t, time, mode=mode)
            for mode in ("joint", "cached")
        }
    for implementation in implementations:
        other = PI0Model(config.replace(attention_implementation=implementation))
        other.load_state_dict(reference.state_dict())
        with torch.no_grad():
            prefix = other.embed_prefix(obs)
            out = other.engine(
                prefix.tokens,
                None,
                pad_mask=prefix.pad_mask,
                ar_mask=prefix.ar_mask,
                positions=prefix.positions,
            ).prefix
            valid = prefix.pad_mask
            assert (out[valid] - ref_cache_out[valid]).abs().max() <= 1e-5
            for mode in ("joint", "cached"):
                v = other.predict_velocity(obs, x_t, time, mode=mode)
                err = (v - ref_v[mode]).abs().max().item()
                assert err <= 1e-5, (implementation, mode, err)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_joint_pass_equals_prefix_cache_plus_suffix_pass(variant, implementation) -> None:
    model = _model(variant, implementation)
    obs = random_observation(model.config)
    x_t, time = _velocity_inputs(model.config)
    with torch.no_grad():
        joint = model.predict_velocity(obs, x_t, time, mode="joint")
        cached = model.predict_velocity(obs, x_t, time, mode="cached")
    if implementation == "eager":
        # Same kernels, same key set: bit-identical (measured max |Δ| = 0 for eager and flex).
        assert torch.equal(joint, cached)
    else:  # SDPA may pick a different kernel for a different query count: ≤ 1e-6 (2.4e-7 seen)
        assert (joint - cached).abs().max().item() <= 1e-6


def test_adarms_makes_pi05_depend_on_time_only_when_perturbed() -> None:
    torch.manual_seed(0)
    model = PI0Model(tiny_pi0_config("pi05"))
    obs = random_observation(model.config)
    x_t, _ = _velocity_inputs(model.config)
    early, late = torch.full((2,), 0.2), torch.full((2,), 0.8)
    with torch.no_grad():
        assert torch.equal(
            model.predict_velocity(obs, x_t, early), model.predict_velocity(obs, x_t, late)
        )
        assert perturb_adarms(model, std=0.1) == 2 * 2 + 1  # 2 layers x 2 norms + final norm
        delta = (
            model.predict_velocity(obs, x_t, early) - model.predict_velocity(obs, x_t, late)
        ).abs()
    assert delta.max().item() > 1e-3


def test_per_token_time_matches_per_sample_time() -> None:
    model = _model("pi05")
    obs = random_observation(model.config)
    x_t, time = _velocity_inputs(model.config)
    per_token = time[:, None].expand(2, model.config.action_horizon)
    with torch.no_grad():
        v_sample = model.predict_velocity(obs, x_t, time)
        v_token = model.predict_velocity(obs, x_t, per_token)
    assert (v_sample - v_token).abs().max() <= 1e-6


@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_is_flow_matching_mse(variant) -> None:
    model = _model(variant)
    config = model.config
    obs, actions = random_observation(config), random_actions(config)
    noise = torch.randn_like(actions)
    time = torch.tensor([0.25, 0.9])
    loss = model(obs, actions, noise=noise, time=time)
    assert loss.shape == (2, config.action_horizon, config.action_dim)
    t = time[:, None, None]
    with torch.no_grad():
        v = model.predict_velocity(obs, t * noise + (1 - t) * actions, time, mode="joint")
    expected = (v - (noise - actions)) ** 2
    assert (loss.detach() - expected).abs().max() <= 1e-5
    loss.mean().backward()
    assert model.action_in_proj.weight.grad is not None


def test_time_sampling_range_and_skew() -> None:
    model = _model("pi0")
    torch.manual_seed(0)
    time = model.sample_time(20_000)
    assert time.min() >= 0.001 and time.max() <= 1.0
    # Beta(1.5, 1) has mean 0.6 -> scaled mean 0.6·0.999 + 0.001.
    assert abs(time.mean().item() - (0.6 * 0.999 + 0.001)) < 0.01


def test_knowledge_insulation_stops_action_gradients_at_the_vlm() -> None:
    for insulated in (False, True):
        model = _model("pi05", knowledge_insulation=insulated)
        obs, actions = random_observation(model.config), random_actions(model.config)
        model(obs, actions, time=torch.tensor([0.4, 0.6])).mean().backward()
        backbone_grad = model.engine.layers[0].backbone.self_attn.q_proj.weight.grad
        expert_grad = model.engine.layers[0].expert.self_attn.q_proj.weight.grad
        assert expert_grad is not None and expert_grad.abs().sum() > 0
        assert (backbone_grad is None) == insulated


@pytest.mark.parametrize("variant", VARIANTS)
def test_sample_actions_is_euler_over_the_joint_velocity(variant) -> None:
    model = _model(variant)
    obs = random_observation(model.config)
    noise = random_actions(model.config, seed=7)
    actions = model.sample_actions(obs, noise=noise, num_steps=4)
    x = noise.clone()
    with torch.no_grad():
        for step in range(4):
            time = torch.full((2,), 1.0 - step / 4)
            x = x + (-1 / 4) * model.predict_velocity(obs, x, time, mode="joint")
    assert actions.shape == (2, model.config.action_horizon, model.config.action_dim)
    assert (actions - x).abs().max() <= 1e-5
    assert torch.equal(actions, model.sample_actions(obs, noise=noise, num_steps=4))


def test_prefix_cache_is_never_mutated_while_denoising() -> None:
    model = _model("pi05")
    obs = random_observation(model.config)
    with torch.no_grad():
        prefix = model.embed_prefix(obs)
        cache = model.fill_prefix_cache(prefix)
        versions = [t._version for t in cache.keys + cache.values]
        snapshot = [t.clone() for t in cache.keys + cache.values]
        x_t, time = _velocity_inputs(model.config)
        for _ in range(3):
            model.denoise_step(cache, prefix, obs.state, x_t, time)
    assert [t._version for t in cache.keys + cache.values] == versions
    assert all(torch.equal(a, b) for a, b in zip(snapshot, cache.keys + cache.values))
    assert cache.keys[0].shape == (2, 2, prefix.tokens.shape[1], 16)  # [B, Hkv, P, D]


class _DropOddImageTokens:
    """Test filter: keeps even-indexed image tokens; `remove=True` really drops the odd ones
    (eval, K = N/2), `remove=False` keeps all slots and masks the odd ones (K = N)."""

    def __init__(self, remove: bool) -> None:
        self.remove = remove
        self.calls = 0

    def __call__(self, image_tokens, image_mask, task_tokens, task_mask):
        self.calls += 1
        batch, n, _ = image_tokens.shape
        if self.remove:
            index = torch.arange(0, n, 2).expand(batch, -1)
            return image_tokens[:, ::2], image_mask[:, ::2], index
        keep = (torch.arange(n) % 2 == 0).expand(batch, -1)
        return image_tokens, image_mask & keep, torch.arange(n).expand(batch, -1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_image_token_filter_shrinks_prefix_and_keeps_unpruned_positions(variant) -> None:
    model = _model(variant)
    obs = random_observation(model.config)
    x_t, time = _velocity_inputs(model.config)
    full_prefix = model.embed_prefix(obs)
    with torch.no_grad():
        velocities = {}
        for remove in (True, False):
            token_filter = _DropOddImageTokens(remove)
            model.set_image_token_filter(token_filter)
            prefix = model.embed_prefix(obs)
            n_image = 2 * model.config.vision.num_patches
            if remove:
                assert prefix.tokens.shape[1] == full_prefix.tokens.shape[1] - n_image // 2
                assert model.fill_prefix_cache(prefix).length == prefix.tokens.shape[1]
                # Kept image tokens keep their unpruned positions (gaps), text keeps its own.
                assert torch.equal(
                    prefix.positions[:, : n_image // 2], full_prefix.positions[:, 0:n_image:2]
                )
                assert torch.equal(
                    prefix.positions[:, n_image // 2 :], full_prefix.positions[:, n_image:]
                )
            assert torch.equal(prefix.suffix_offset, full_prefix.suffix_offset)
            velocities[remove] = model.predict_velocity(obs, x_t, time, mode="cached")
            assert token_filter.calls == 2
    model.set_image_token_filter(None)
    assert (velocities[True] - velocities[False]).abs().max() <= 1e-5
    with torch.no_grad():
        unfiltered = model.predict_velocity(obs, x_t, time)
    assert (unfiltered - velocities[True]).abs().max() > 1e-4


def test_module_filter_is_a_submodule_and_can_be_removed() -> None:
    model = _model("pi0")
    model.set_image_token_filter(torch.nn.Linear(2, 2))
    assert "image_token_filter.weight" in model.state_dict()
    model.set_image_token_filter(None)
    assert model.image_token_filter is None
    assert not any(k.startswith("image_token_filter") for k in model.state_dict())


def test_bad_inputs_name_the_shape() -> None:
    model = _model("pi0")
    obs = random_observation(model.config)
    with pytest.raises(ValueError, match=r"actions must be \[B, H, A\] = \(2, 5, 6\)"):
        model(obs, torch.zeros(2, 5, 7))
    obs.state = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"state must be \[B=2, state_dim=7\]"):
        model(obs, random_actions(model.config))
    obs = random_observation(model.config)
    obs.images, obs.image_masks = obs.images[:, :1], obs.image_masks[:, :1]
    with pytest.raises(ValueError, match=r"observation has 1 cameras, config\.num_cameras is 2"):
        model(obs, random_actions(model.config))
    obs = random_observation(model.config)
    obs.tokens, obs.token_mask = (torch.cat([t, t], dim=1) for t in (obs.tokens, obs.token_mask))
    with pytest.raises(ValueError, match=r"prompt has 24 tokens, config\.max_token_len is 12"):
        model(obs, random_actions(model.config))
    with pytest.raises(ValueError, match="images must be"):
        model.vision_tower(torch.zeros(1, 3, 32, 32))


def test_dict_images_match_stacked_tensor() -> None:
    model = _model("pi0")
    obs = random_observation(model.config, camera_present=[[True, False], [True, True]])
    as_dict = type(obs)(
        images={"base": obs.images[:, 0], "wrist": obs.images[:, 1]},
        image_masks={"base": obs.image_masks[:, 0], "wrist": obs.image_masks[:, 1]},
        tokens=obs.tokens,
        token_mask=obs.token_mask,
        state=obs.state,
    )
    x_t, time = _velocity_inputs(model.config)
    with torch.no_grad():
        assert torch.equal(
            model.predict_velocity(obs, x_t, time), model.predict_velocity(as_dict, x_t, time)
        )


def test_bfloat16_policy_keeps_fp32_islands() -> None:
    model = _model("pi05", dtype="bfloat16")
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["engine.layers.0.backbone.self_attn.q_proj.weight"] == torch.bfloat16
    assert dtypes["vision_tower.encoder.layers.0.mlp.fc1.weight"] == torch.bfloat16
    for name in [
        "vision_tower.embeddings.patch_embedding.weight",
        "vision_tower.embeddings.position_embedding.weight",
        "engine.layers.0.backbone.input_layernorm.weight",
        "engine.layers.0.expert.input_layernorm.dense.weight",
        "engine.expert_norm.dense.weight",
        "time_mlp_in.weight",
        "action_in_proj.weight",
        "action_out_proj.weight",
    ]:
        assert dtypes[name] == torch.float32, name
    obs, actions = random_observation(model.config), random_actions(model.config)
    loss = model(obs, actions, time=torch.tensor([0.3, 0.6]))
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
    assert model.sample_actions(obs, num_steps=2).dtype == torch.float32


@pytest.mark.parametrize(("variant", "expected"), [("pi0", 3_238_048_528), ("pi05", 3_353_433_872)])
def test_full_size_parameter_tree_matches_openpi(variant, expected) -> None:
    """Meta-device build of the real sizes; openpi's JAX trees hold exactly these counts (no
    expert embedding / lm_head, as in our runnable model)."""
    with torch.device("meta"):
        model = PI0Model(PI0Config(variant=variant))
    assert sum(p.numel() for p in model.parameters()) == expected
    assert sum(p.numel() for p in model.vision_tower.parameters()) == 412_442_352
    assert not any("lm_head" in name for name, _ in model.named_parameters())
