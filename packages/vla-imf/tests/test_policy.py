"""Pins `IMFPolicy`: the trainer-facing API, windowing, one-NFE inference, checkpoint
round-trip through safetensors, optimiser groups, gradient checkpointing, and an overfit run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vla_core.checkpointing import apply_activation_checkpointing, is_activation_checkpointed
from vla_imf import AttnResOperator, IMFPolicy, ObjectiveConfig
from vla_imf._testing import pusht_stats, random_batch, tiny_policy_config
from vla_imf.backbones import CHECKPOINT_LAYER_TYPES


def _policy(**overrides: object) -> IMFPolicy:
    cfg = tiny_policy_config(**overrides)
    policy = IMFPolicy(cfg)
    policy.fit_normalizer(pusht_stats(cfg))
    return policy


@pytest.mark.parametrize("backbone", ["attnres_full", "attnres_block", "vanilla"])
@pytest.mark.parametrize("objective", ["imf", "flow_matching"])
def test_loss_backward_and_predict_shapes(backbone: str, objective: str) -> None:
    torch.manual_seed(0)
    policy = _policy(backbone=backbone, objective=objective)
    batch = random_batch(policy.config, batch=3)
    loss = policy.compute_loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in policy.backbone.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().max()) > 0 for g in grads)
    policy.eval()
    out = policy.predict_action(batch)
    assert out["action_pred"].shape == (3, 8, 2)
    assert out["action"].shape == (3, 4, 2)


def test_action_window_starts_at_last_observation_step() -> None:
    policy = _policy(n_obs_steps=3, n_action_steps=5).eval()
    batch = random_batch(policy.config, batch=2)
    out = policy.predict_action(batch, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out["action"], out["action_pred"][:, 2:7])
    again = policy.predict_action(batch, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out["action_pred"], again["action_pred"])


@pytest.mark.parametrize(("objective", "expected_calls"), [("imf", 1), ("flow_matching", 10)])
def test_network_evaluations_per_prediction(objective: str, expected_calls: int) -> None:
    policy = _policy(objective=objective).eval()
    calls: list[int] = []
    policy.backbone.register_forward_hook(lambda *_: calls.append(1))
    policy.predict_action(random_batch(policy.config, batch=2))
    assert len(calls) == expected_calls


def test_num_inference_steps_override_matches_a_policy_built_with_it() -> None:
    one = _policy(objective="imf").eval()
    two = IMFPolicy(dataclasses.replace(one.config, num_inference_steps=2)).eval()
    two.load_state_dict(one.state_dict())
    batch = random_batch(one.config, batch=2)
    calls: list[int] = []
    one.backbone.register_forward_hook(lambda *_: calls.append(1))
    got = one.predict_action(
        batch, generator=torch.Generator().manual_seed(3), num_inference_steps=2
    )
    assert len(calls) == 2  # 2 NFE for this call only
    want = two.predict_action(batch, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got["action_pred"], want["action_pred"])
    default = one.predict_action(batch, generator=torch.Generator().manual_seed(3))
    assert len(calls) == 3 and not torch.equal(default["action_pred"], got["action_pred"])
    with pytest.raises(ValueError, match="num_inference_steps"):
        one.predict_action(batch, num_inference_steps=0)


def test_state_dict_round_trips_through_safetensors(tmp_path: Path) -> None:
    torch.manual_seed(1)
    cfg = tiny_policy_config(
        image_keys=("observation.image",), image_shape=(3, 48, 48), crop_shape=(40, 40)
    )
    policy = IMFPolicy(cfg)
    stats = pusht_stats(cfg)
    stats["action"] = {"min": torch.tensor([10.0, 20.0]), "max": torch.tensor([300.0, 400.0])}
    policy.fit_normalizer(stats)
    path = tmp_path / "policy.safetensors"
    save_file(policy.state_dict(), str(path))
    restored = IMFPolicy(cfg)
    restored.load_state_dict(load_file(str(path)))
    assert bool(restored.normalizer.fitted)
    batch = random_batch(cfg, batch=2)
    policy.eval()
    restored.eval()
    a = policy.predict_action(batch, generator=torch.Generator().manual_seed(2))["action_pred"]
    b = restored.predict_action(batch, generator=torch.Generator().manual_seed(2))["action_pred"]
    assert torch.equal(a, b)


def test_unnormalised_actions_use_fitted_limits() -> None:
    policy = _policy().eval()
    stats = pusht_stats(policy.config)
    stats["action"] = {"min": torch.tensor([100.0, 100.0]), "max": torch.tensor([101.0, 101.0])}
    policy.fit_normalizer(stats)
    out = policy.predict_action(random_batch(policy.config, batch=4))["action_pred"]
    # A one-step sample of a near-random net is O(1) in normalised units around the middle.
    assert (out - 100.5).abs().max() < 10.0


def test_optimizer_groups() -> None:
    policy = _policy(
        backbone="attnres_full",
        image_keys=("observation.image",),
        image_shape=(3, 48, 48),
        crop_shape=(40, 40),
    )
    optimizer = policy.configure_optimizers(
        weight_decay=1e-3, learning_rate=1e-4, betas=(0.9, 0.95)
    )
    assert isinstance(optimizer, torch.optim.AdamW)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 1e-3 and no_decay["weight_decay"] == 0.0
    assert optimizer.defaults["lr"] == 1e-4 and optimizer.defaults["betas"] == (0.9, 0.95)
    decay_ids = {id(p) for p in decay["params"]}
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert not decay_ids & no_decay_ids
    assert decay_ids | no_decay_ids == {id(p) for p in policy.parameters()}
    for module in policy.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, (nn.Linear, nn.Conv2d)) and name == "weight":
                assert id(param) in decay_ids
            else:
                assert id(param) in no_decay_ids, (type(module).__name__, name)
    queries = [m.pseudo_query for m in policy.modules() if isinstance(m, AttnResOperator)]
    assert queries and all(id(q) in no_decay_ids for q in queries)
    vanilla = _policy(backbone="vanilla")
    _, vanilla_no_decay = vanilla.configure_optimizers().param_groups
    ids = {id(p) for p in vanilla_no_decay["params"]}
    assert id(vanilla.backbone.pos_emb) in ids and id(vanilla.backbone.cond_pos_emb) in ids


@pytest.mark.parametrize("backbone", ["attnres_full", "vanilla"])
def test_gradient_checkpointing_gives_identical_loss_and_gradients(backbone: str) -> None:
    torch.manual_seed(3)
    plain = _policy(backbone=backbone)
    ckpt = IMFPolicy(tiny_policy_config(backbone=backbone))
    ckpt.load_state_dict(plain.state_dict())
    apply_activation_checkpointing(ckpt.backbone, CHECKPOINT_LAYER_TYPES[backbone])
    assert any(is_activation_checkpointed(m) for m in ckpt.modules())
    batch = random_batch(plain.config, batch=3)
    results = []
    for policy in (plain, ckpt):
        torch.manual_seed(4)
        loss = policy.compute_loss(batch)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
        results.append((loss.detach(), grads))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-5)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backbone", ["attnres_full", "vanilla"])
def test_checkpointing_applied_from_outside_is_seen_by_the_loss(backbone: str) -> None:
    """The iMF loss asks the module tree whether it is checkpointed (no config flag involved)."""
    torch.manual_seed(3)
    plain = _policy(backbone=backbone)
    outside = IMFPolicy(tiny_policy_config(backbone=backbone))
    outside.load_state_dict(plain.state_dict())
    assert apply_activation_checkpointing(outside.backbone, CHECKPOINT_LAYER_TYPES[backbone]) > 0
    assert not hasattr(outside.config, "gradient_checkpointing")
    batch = random_batch(plain.config, batch=3)
    results = []
    for policy in (plain, outside):
        torch.manual_seed(4)
        loss = policy.compute_loss(batch)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
        results.append((loss.detach(), grads))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-5)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backbone", ["attnres_full", "vanilla"])
def test_loss_runs_under_bf16_autocast(backbone: str) -> None:
    """The trainer may wrap steps in autocast; the JVP itself runs in fp32 with autocast off."""
    torch.manual_seed(8)
    policy = _policy(backbone=backbone)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = policy.compute_loss(random_batch(policy.config, batch=2))
    loss.backward()
    assert torch.isfinite(loss)
    assert policy.backbone.head.weight.grad is not None


def test_v_head_tangent_trains_its_head() -> None:
    torch.manual_seed(5)
    policy = _policy(tangent_source="v_head")
    assert policy.velocity_head is not None
    out = policy.compute_loss_output(random_batch(policy.config, batch=3))
    assert out.aux_loss is not None and float(out.aux_loss.detach()) > 0
    out.loss.backward()
    assert policy.velocity_head.weight.grad is not None
    assert float(policy.velocity_head.weight.grad.abs().max()) > 0
    assert _policy().velocity_head is None


def test_padded_action_rows_are_left_out_of_the_loss() -> None:
    policy = _policy()
    batch = random_batch(policy.config, batch=3)
    batch["action_is_pad"][1, 5:] = True
    out = policy.compute_loss_output(batch)
    valid = (~batch["action_is_pad"])[..., None]
    squared = (out.prediction - out.target).pow(2).detach()
    assert torch.allclose(out.loss.detach(), (squared * valid).sum((1, 2)).mean(), rtol=1e-6)
    assert not torch.allclose(out.loss.detach(), squared.sum((1, 2)).mean(), rtol=1e-3)
    unmasked = IMFPolicy(tiny_policy_config(objective_config=ObjectiveConfig(mask_padding=False)))
    unmasked.load_state_dict(policy.state_dict())
    out = unmasked.compute_loss_output(batch)
    squared = (out.prediction - out.target).pow(2).detach()
    assert torch.allclose(out.loss.detach(), squared.sum((1, 2)).mean(), rtol=1e-6)


def test_bad_batches_raise_named_errors() -> None:
    policy = _policy()
    batch = random_batch(policy.config, batch=2)
    with pytest.raises(KeyError, match=r"observation\.state"):
        policy.compute_loss({k: v for k, v in batch.items() if k != "observation.state"})
    with pytest.raises(ValueError, match=r"observation\.state"):
        policy.compute_loss({**batch, "observation.state": torch.zeros(2, 3, 2)})
    with pytest.raises(ValueError, match="'action'"):
        policy.compute_loss({**batch, "action": torch.zeros(2, 7, 2)})
    with pytest.raises(ValueError, match="action_is_pad"):
        policy.compute_loss({**batch, "action_is_pad": torch.zeros(2, 8)})
    with pytest.raises(RuntimeError, match="not fitted"):
        IMFPolicy(policy.config).compute_loss(batch)


def test_image_policy_trains_the_image_encoder() -> None:
    torch.manual_seed(7)
    cfg = tiny_policy_config(
        image_keys=("observation.image",), image_shape=(3, 48, 48), crop_shape=(40, 40)
    )
    policy = IMFPolicy(cfg)
    policy.fit_normalizer(pusht_stats(cfg))
    batch = random_batch(cfg, batch=2)
    policy.compute_loss(batch).backward()
    encoder = policy.image_encoders["observation__image"]
    assert float(encoder.backbone.stem[0].weight.grad.abs().max()) > 0
    with pytest.raises(ValueError, match=r"observation\.image"):
        policy.compute_loss({**batch, "observation.image": torch.zeros(2, 2, 3, 40, 40)})


@pytest.mark.slow
def test_overfit_two_modes_with_one_step_samples() -> None:
    """A tiny attnres_full iMF policy learns a 2-mode action law; 1-NFE samples hit both modes.

    Actions are constant chunks at (128, 128) or (384, 384) px (+4 px noise); 400 AdamW steps,
    lr 1e-2 with cosine decay. Pass: each mode gets 25–75 % of 256 samples, median distance to
    the nearest mode < 40 px, 90th percentile < 90 px (modes are 362 px apart). Measured over
    seeds 0/1/2: 51/50/59 %, median 12/25/26 px, p90 37/54/56 px.
    """
    torch.manual_seed(0)
    cfg = tiny_policy_config(
        horizon=2,
        n_obs_steps=1,
        n_action_steps=1,
        n_emb=32,
        n_layer=1,
        objective_config=ObjectiveConfig(
            p_mean=0.0, p_std=1.6, boundary_fraction=0.25, adaptive_p=1.0
        ),
    )
    policy = IMFPolicy(cfg)
    policy.fit_normalizer(pusht_stats(cfg))
    modes = torch.tensor([[128.0, 128.0], [384.0, 384.0]])

    def batch(n: int) -> dict[str, torch.Tensor]:
        which = torch.randint(0, 2, (n,))
        action = modes[which][:, None, :].expand(n, 2, 2) + 4 * torch.randn(n, 2, 2)
        return {"observation.state": torch.full((n, 1, 2), 256.0), "action": action}

    def distances() -> torch.Tensor:
        policy.eval()
        out = policy.predict_action(batch(256), generator=torch.Generator().manual_seed(1))
        policy.train()
        return torch.cdist(out["action_pred"].mean(1), modes)  # [256, 2]

    before = distances().min(1).values.median()
    steps = 400
    optimizer = policy.configure_optimizers(weight_decay=0.0, learning_rate=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        loss = policy.compute_loss(batch(256))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    dist = distances()
    nearest = dist.min(1).values
    share = dist.argmin(1).float().mean().item()
    assert 0.25 <= share <= 0.75, share
    assert nearest.median() < 40.0 and nearest.median() < before / 2, (nearest.median(), before)
    assert nearest.quantile(0.9) < 90.0, nearest.quantile(0.9)


@pytest.mark.parametrize("tangent_source", ["boundary", "v_head"])
@pytest.mark.parametrize("backbone", ["attnres_full", "vanilla"])
def test_boundary_rows_skip_the_jvp_with_the_same_loss_and_gradients(
    backbone: str, tangent_source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The policy's loss forwards the r = t rows without the JVP (`imf_loss(u_rows=…)`); the
    loss and every gradient equal the one-JVP-over-the-whole-batch path."""
    import vla_imf.policy as policy_module

    torch.manual_seed(6)
    policy = _policy(backbone=backbone, tangent_source=tangent_source)
    with torch.no_grad():  # zero-initialised heads would hide a wrong row order
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = random_batch(policy.config, batch=8)
    sizes: list[int] = []
    hook = policy.backbone.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])))

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        policy.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        loss = policy.compute_loss(batch)
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in policy.parameters()])

    split = run()
    assert 4 in sizes  # the 4 boundary rows (boundary_fraction 0.5) ran on their own
    real_imf_loss = policy_module.imf_loss
    monkeypatch.setattr(
        policy_module, "imf_loss", lambda *a, **k: real_imf_loss(*a, **{**k, "u_rows": None})
    )
    sizes.clear()
    whole = run()
    assert 4 not in sizes
    hook.remove()
    torch.testing.assert_close(split[0], whole[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(split[1], whole[1], rtol=1e-4, atol=1e-6)
