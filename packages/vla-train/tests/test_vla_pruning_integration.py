"""vla-prune x vla-core integration (issue #5): a tiny pi0.5 with `vla_prune.ImageTokenPruner`.

Pins: in eval, `sample_actions` runs on a shorter prefix (fewer image tokens than the 2 x 16
unpruned) and returns finite actions of the right shape that differ from the unpruned model's
(AdaRMS perturbed so time matters); in train mode the prefix length is unchanged and one
backward step reaches the image (vision tower, projector) and language (token embedding)
parameters; `model.eval()` / `model.train()` reach the attached pruner.
"""

from __future__ import annotations

import torch

from vla_core import PI0Model
from vla_core._testing import perturb_adarms, random_actions, random_observation, tiny_pi0_config
from vla_prune import ImageTokenPruner, NoiseSchedule, PrunerConfig


def make_model(pruner: ImageTokenPruner | None) -> PI0Model:
    torch.manual_seed(0)
    model = PI0Model(tiny_pi0_config("pi05"))
    assert perturb_adarms(model) > 0
    model.set_image_token_filter(pruner)
    return model


def test_eval_prunes_the_prefix_and_samples_valid_actions() -> None:
    pruner = ImageTokenPruner(48, PrunerConfig(min_keep=6, num_cameras=2))
    model = make_model(pruner).eval()
    assert not pruner.training  # model.eval() reached the filter
    obs = random_observation(model.config, batch_size=2)
    unpruned_model = make_model(None).eval()
    full_prefix = unpruned_model.embed_prefix(obs)
    pruned_prefix = model.embed_prefix(obs)
    num_image = 2 * model.config.vision.num_patches
    assert full_prefix.tokens.shape[1] == num_image + obs.tokens.shape[1]
    assert pruned_prefix.tokens.shape[1] < full_prefix.tokens.shape[1]
    kept = pruned_prefix.pad_mask[:, : pruned_prefix.tokens.shape[1] - obs.tokens.shape[1]].sum(1)
    assert bool((kept >= 6).all()) and bool((kept < num_image).all())
    noise = torch.randn(2, model.config.action_horizon, model.config.action_dim)
    actions = model.sample_actions(obs, noise=noise, num_steps=3)
    assert actions.shape == (2, model.config.action_horizon, model.config.action_dim)
    assert torch.isfinite(actions).all()
    unpruned = unpruned_model.sample_actions(obs, noise=noise, num_steps=3)
    assert (actions - unpruned).abs().max() > 1e-4  # pruning really changed the prefix


def test_train_step_keeps_length_and_reaches_image_and_language() -> None:
    pruner = ImageTokenPruner(48, PrunerConfig(num_cameras=2))
    model = make_model(pruner).train()
    assert pruner.training
    pruner.set_noise_scale(NoiseSchedule("linear", max_steps=10)(3))
    assert pruner.noise_scale == 0.7
    obs = random_observation(model.config, batch_size=2)
    prefix = model.embed_prefix(obs)
    assert prefix.tokens.shape[1] == 2 * model.config.vision.num_patches + obs.tokens.shape[1]
    loss = model(obs, random_actions(model.config)).mean()
    loss.backward()
    for name in (
        "vision_tower.embeddings.patch_embedding.weight",
        "multi_modal_projector.weight",
        "embed_tokens.weight",
    ):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    stats = pruner.last_stats
    assert stats is not None
