"""Real-time chunking in vla-imf's samplers: zero guidance is plain sampling, guidance pulls the
frozen prefix onto the previous chunk, and the target is aligned to the executed window."""

from __future__ import annotations

import pytest
import torch

from vla_core.rtc import RTCConfig, RTCGuidance
from vla_imf._testing import pusht_stats, random_batch, tiny_policy_config
from vla_imf.objective import sample_euler, sample_mean_flow
from vla_imf.policy import IMFPolicy


def _linear_u(z: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.5 * z + r[:, None, None] - t[:, None, None]


@pytest.mark.parametrize("sampler", [sample_euler, sample_mean_flow])
def test_zero_weight_guidance_is_plain_sampling(sampler) -> None:
    noise = torch.randn(3, 6, 2, generator=torch.Generator().manual_seed(0))
    guidance = RTCGuidance(torch.randn(3, 6, 2), torch.ones(6), max_guidance_weight=0.0)
    torch.testing.assert_close(
        sampler(_linear_u, noise, 4, rtc=guidance), sampler(_linear_u, noise, 4)
    )


def _policy(objective: str) -> IMFPolicy:
    torch.manual_seed(0)
    policy = IMFPolicy(tiny_policy_config(objective=objective, num_inference_steps=4))
    policy.fit_normalizer(pusht_stats(policy.config))
    return policy.eval()


def test_rtc_guidance_aligns_target_to_the_executed_window() -> None:
    policy = _policy("flow_matching")
    cfg = policy.config  # horizon 8, n_obs_steps 2 -> executed window starts at index 1
    previous = torch.full((2, 6, 2), 256.0)  # the middle of [0, 512] normalises to 0
    guidance = policy.rtc_guidance(
        previous, inference_delay=2, execution_horizon=1, config=RTCConfig("zeros")
    )
    assert guidance.target.shape == (2, cfg.horizon, 2)
    assert guidance.weights.tolist() == [0, 1, 1, 0, 0, 0, 0, 0]
    torch.testing.assert_close(guidance.target[:, 1:7], torch.zeros(2, 6, 2))
    with pytest.raises(ValueError, match=r"previous_action must be \[B, K, 2\]"):
        policy.rtc_guidance(
            previous[..., :1], inference_delay=2, execution_horizon=1, config=RTCConfig()
        )


@pytest.mark.parametrize("objective", ["flow_matching", "imf"])
def test_rtc_pulls_frozen_actions_towards_previous_chunk(objective: str) -> None:
    policy = _policy(objective)
    batch = random_batch(policy.config, batch=4, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)
    plain = policy.predict_action(batch, generator=generator)["action"]
    previous = torch.rand(4, 7, 2, generator=torch.Generator().manual_seed(3)) * 512
    guidance = policy.rtc_guidance(
        previous, inference_delay=2, execution_horizon=1, config=RTCConfig("exp", 5.0)
    )
    generator = torch.Generator().manual_seed(2)
    guided = policy.predict_action(batch, generator=generator, rtc=guidance)["action"]
    frozen = slice(0, 2)
    plain_error = (plain[:, frozen] - previous[:, frozen]).abs().mean()
    guided_error = (guided[:, frozen] - previous[:, frozen]).abs().mean()
    assert guided_error < 0.5 * plain_error, (guided_error, plain_error)
