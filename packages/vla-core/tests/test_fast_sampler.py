"""Pins `vla_core.fast_sampler` on CPU (the CUDA-graph path is in test_fast_sampler_gpu.py):

- fp32, compiled (dynamo + aot_eager: the same graphs inductor would get, without C++ codegen)
  and fused ≡ `model.sample_actions` at ≤ 1e-5 (measured bit-identical), pi0 and pi0.5;
- the static buffers follow new inputs (a second observation gives its own actions);
- bf16: the fast path's deviation from the fp32 model is at most 2× the eager bf16 model's own
  deviation (the tolerance stated in the README, chosen from that measured spread);
- shape changes, a missing state, bad options and a varying prefix length raise `ValueError`s
  that name the offending input and shapes.
"""

import pytest
import torch
from torch import Tensor

from vla_core import PI0Model
from vla_core._testing import perturb_adarms, random_observation, tiny_pi0_config
from vla_core.fast_sampler import compile_sampler, with_dtype_policy
from vla_core.layers import RMSNorm

STEPS = 3


def _model(variant, seed=0):
    torch.manual_seed(seed)
    model = PI0Model(tiny_pi0_config(variant, attention_implementation="sdpa"))
    perturb_adarms(model, std=0.1, seed=seed)
    return model.eval()


def _noise(config, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, config.action_horizon, config.action_dim, generator=gen)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_compiled_fused_fp32_matches_sample_actions(variant) -> None:
    model = _model(variant)
    config = model.config
    first, second = random_observation(config, seed=0), random_observation(config, seed=1)
    sampler = compile_sampler(
        model, first, num_steps=STEPS, dtype=None, compile_backend="aot_eager", warmup=1
    )
    assert sampler.compiled and not sampler.cuda_graph and sampler.first_call_s > 0
    for obs, seed in ((first, 2), (second, 3), (first, 4)):
        noise = _noise(config, seed)
        expected = model.sample_actions(obs, noise=noise, num_steps=STEPS)
        torch.testing.assert_close(sampler(obs, noise), expected, rtol=0, atol=1e-5)
    # The source model is untouched (fusion applied to a copy).
    assert hasattr(model.engine.layers[0].backbone.self_attn, "q_proj")


@pytest.mark.parametrize("arithmetic", ["openpi", "exact"])
def test_time_arithmetic_is_honoured(arithmetic) -> None:
    model = _model("pi0")
    obs = random_observation(model.config)
    noise = _noise(model.config, 5)
    sampler = compile_sampler(
        model, obs, num_steps=STEPS, dtype=None, compile=False, time_arithmetic=arithmetic
    )
    expected = model.sample_actions(obs, noise=noise, num_steps=STEPS, time_arithmetic=arithmetic)
    torch.testing.assert_close(sampler(obs, noise), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_bf16_fast_path_is_within_twice_the_bf16_spread(variant) -> None:
    """Tolerance: max|fast_bf16 − fp32| ≤ 2·max|eager_bf16 − fp32| (measured on these configs:
    eager bf16 deviates 0.07–0.33 % of max|a|; the CPU fast path adds nothing)."""
    model = _model(variant)
    obs = random_observation(model.config)
    noise = _noise(model.config, 6)
    reference = model.sample_actions(obs, noise=noise, num_steps=STEPS)
    eager_bf16 = with_dtype_policy(model, "bfloat16").sample_actions(
        obs, noise=noise, num_steps=STEPS
    )
    spread = float((eager_bf16 - reference).abs().max())
    assert 0 < spread < 0.05 * float(reference.abs().max())  # bf16 really ran, and sanely
    sampler = compile_sampler(model, obs, num_steps=STEPS, compile_backend="aot_eager", warmup=1)
    deviation = float((sampler(obs, noise) - reference).abs().max())
    assert deviation <= 2 * spread


def test_dtype_policy_keeps_fp32_islands_unrounded() -> None:
    model = _model("pi05")
    converted = with_dtype_policy(model, "bfloat16")
    assert converted.config.dtype == "bfloat16" and model.config.dtype == "float32"
    layer, source = converted.engine.layers[0], model.engine.layers[0]
    assert layer.backbone.self_attn.q_proj.weight.dtype == torch.bfloat16
    norm, source_norm = layer.expert.input_layernorm, source.expert.input_layernorm
    assert isinstance(norm, RMSNorm) and norm.dense is not None and source_norm.dense is not None
    assert torch.equal(norm.dense.weight, source_norm.dense.weight)  # fp32, not via bf16
    assert torch.equal(converted.action_out_proj.weight, model.action_out_proj.weight)
    assert converted.vision_tower.embeddings.patch_embedding.weight.dtype == torch.float32


def test_shape_changes_and_bad_options_raise() -> None:
    model = _model("pi0")
    config = model.config
    obs = random_observation(config)
    sampler = compile_sampler(model, obs, num_steps=STEPS, dtype=None, compile=False)
    shorter = random_observation(config.replace(max_token_len=10))
    with pytest.raises(ValueError, match=r"tokens of shape \(2, 12\).*got \(2, 10\)"):
        sampler(shorter)
    one = random_observation(config, batch_size=1)
    with pytest.raises(ValueError, match="images of shape"):
        sampler(one)
    with pytest.raises(ValueError, match=r"noise must be \(2, 5, 6\)"):
        sampler(obs, torch.zeros(2, 5, 7))
    obs.state = None
    with pytest.raises(ValueError, match="state"):
        sampler(obs)
    with pytest.raises(ValueError, match="cuda_graph=True needs the example on a CUDA device"):
        compile_sampler(model, obs, cuda_graph=True)
    with pytest.raises(ValueError, match="capture_prefix=True needs cuda_graph=True"):
        compile_sampler(model, obs, compile=False, cuda_graph=False, capture_prefix=True)


class _KeepFirst:
    """An image-token filter keeping the first `keep` image tokens (a variable budget)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep

    def __call__(
        self, images: Tensor, image_mask: Tensor, language: Tensor, language_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        index = torch.arange(self.keep).expand(images.shape[0], -1)
        return images[:, : self.keep], image_mask[:, : self.keep], index


def test_a_changing_prefix_length_raises_and_a_fixed_one_matches() -> None:
    model = _model("pi05")
    token_filter = _KeepFirst(8)
    model.set_image_token_filter(token_filter)
    obs = random_observation(model.config)
    noise = _noise(model.config, 7)
    sampler = compile_sampler(model, obs, num_steps=STEPS, dtype=None, compile=False, fuse=False)
    expected = model.sample_actions(obs, noise=noise, num_steps=STEPS)
    torch.testing.assert_close(sampler(obs, noise), expected, rtol=0, atol=1e-5)
    token_filter.keep = 6
    with pytest.raises(ValueError, match=r"prefix length changed.*\(2, 20\).*\(2, 18\)"):
        sampler(obs)
