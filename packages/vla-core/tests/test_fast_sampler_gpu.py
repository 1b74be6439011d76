"""Pins the CUDA-graph path of `vla_core.fast_sampler` (skipped without CUDA, see conftest.py):

- graph replay ≡ eager `sample_actions` on the same device (fp32, no compile: ≤ 1e-5·max|a|;
  inductor + graph: ≤ 1e-4·max|a|, kernel reduction order), for pi0 and pi0.5;
- the graph reads its static buffers: new observations / noise give their own actions;
- `capture_prefix=True` (prefix + loop in one graph) gives the same actions;
- bf16 + inductor + graph: within 2× the eager bf16 model's deviation from fp32 (README tolerance).
"""

import pytest
import torch

from vla_core import PI0Model
from vla_core._testing import perturb_adarms, random_observation, tiny_pi0_config
from vla_core.fast_sampler import compile_sampler, with_dtype_policy

pytestmark = pytest.mark.gpu
STEPS = 4


def _model(variant):
    torch.manual_seed(0)
    model = PI0Model(tiny_pi0_config(variant, attention_implementation="sdpa"))
    perturb_adarms(model, std=0.1)
    return model.cuda().eval()


def _noise(config, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, config.action_horizon, config.action_dim, generator=gen).cuda()


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
@pytest.mark.parametrize("capture_prefix", [False, True])
def test_graph_replay_tracks_new_inputs(variant, capture_prefix) -> None:
    model = _model(variant)
    config = model.config
    observations = [random_observation(config, seed=s, device="cuda") for s in range(3)]
    sampler = compile_sampler(
        model, observations[0], num_steps=STEPS, dtype=None, compile=False,
        capture_prefix=capture_prefix,
    )  # fmt: skip
    assert sampler.cuda_graph
    for index, obs in enumerate(observations):
        noise = _noise(config, index)
        expected = model.sample_actions(obs, noise=noise, num_steps=STEPS)
        scale = float(expected.abs().max())
        torch.testing.assert_close(sampler(obs, noise), expected, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_inductor_graph_fp32_matches_eager(variant) -> None:
    model = _model(variant)
    obs = random_observation(model.config, device="cuda")
    noise = _noise(model.config, 0)
    sampler = compile_sampler(model, obs, num_steps=STEPS, dtype=None)
    expected = model.sample_actions(obs, noise=noise, num_steps=STEPS)
    scale = float(expected.abs().max())
    torch.testing.assert_close(sampler(obs, noise), expected, rtol=0, atol=1e-4 * scale)


def test_bf16_inductor_graph_within_twice_the_bf16_spread() -> None:
    model = _model("pi05")
    obs = random_observation(model.config, device="cuda")
    noise = _noise(model.config, 1)
    reference = model.sample_actions(obs, noise=noise, num_steps=STEPS)
    eager_bf16 = with_dtype_policy(model, "bfloat16").sample_actions(
        obs, noise=noise, num_steps=STEPS
    )
    spread = float((eager_bf16 - reference).abs().max())
    assert spread > 0
    sampler = compile_sampler(model, obs, num_steps=STEPS)
    assert float((sampler(obs, noise) - reference).abs().max()) <= 2 * spread
    with pytest.raises(ValueError, match="tokens of shape"):
        sampler(random_observation(model.config.replace(max_token_len=10), device="cuda"))
