"""FLOP counters: the closed form equals FlopCounterMode on our model exactly, and reproduces the
published pi0 numbers (Understanding-PI0's profiler total, CLP's 2-camera figure)."""

from __future__ import annotations

import pytest

from vla_core._testing import tiny_pi0_config
from vla_core.flops import (
    analytic_flops,
    measure_flops,
    measure_sample_actions_flops,
    profiler_matched_flops,
    published_flops_config,
)

SEED_PROFILER_TOTAL = 4_354_614_038_072  # Understanding-PI0 reports/flops.log, exact
SEED_MATMULS = 4_353_559_658_496  # its mm/addmm/bmm rows without the rotary inv_freq bmm
FULL_TOTAL = 4_379_061_288_960  # + SigLIP attention 24,461,180,928 + patch conv 1,040,449,536


def test_analytic_blocks_match_the_profiler_rows() -> None:
    flops = analytic_flops(published_flops_config())
    assert (flops.prefix_tokens, flops.suffix_tokens, flops.steps) == (816, 51, 10)
    assert flops.vision_linear + flops.projector == 635_028_111_360
    assert flops.prefix == 3_332_496_162_816
    assert flops.expert_linear + flops.expert_attention == 382_856_232_960
    assert flops.suffix_projections == 3_179_151_360
    assert flops.vision_attention == 24_461_180_928
    assert flops.patch_embedding == 1_040_449_536
    assert flops.total == FULL_TOTAL


def test_seed_profiler_total_is_reproduced_exactly() -> None:
    profile = profiler_matched_flops()
    assert profile["total"] == SEED_PROFILER_TOTAL
    assert profile["matmuls"] == SEED_MATMULS
    # what the profiler missed is exactly the gap to the full count (minus its element-wise part)
    missed = profile["not_counted_vision_attention"] + profile["not_counted_patch_embedding"]
    assert profile["matmuls"] + missed == FULL_TOTAL


def test_seed_profiler_rejects_pi05() -> None:
    with pytest.raises(ValueError, match="pi05"):
        profiler_matched_flops(published_flops_config().replace(variant="pi05"))


def test_two_cameras_match_clp() -> None:
    flops = analytic_flops(published_flops_config().replace(num_cameras=2))
    assert round(flops.total / 1e9, 1) == 3073.0


def test_flop_counter_equals_closed_form_full_size_pi0() -> None:
    """FlopCounterMode on the meta-device full-size model, the seed's setting."""
    measured = measure_sample_actions_flops(published_flops_config())
    assert measured.total == FULL_TOTAL


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
@pytest.mark.parametrize("backend", ["eager", "sdpa", "flex"])
@pytest.mark.parametrize(("batch", "steps", "prompt"), [(1, 10, None), (2, 3, 7)])
def test_flop_counter_equals_closed_form_tiny(variant, backend, batch, steps, prompt) -> None:
    config = tiny_pi0_config(variant, attention_implementation=backend)
    measured = measure_sample_actions_flops(
        config, num_steps=steps, batch_size=batch, prompt_tokens=prompt
    )
    expected = analytic_flops(config, num_steps=steps, batch_size=batch, prompt_tokens=prompt)
    assert measured.total == expected.total


def test_measure_flops_returns_result_and_breakdown() -> None:
    import torch

    a, b = torch.ones(4, 8), torch.ones(8, 3)
    result, counted = measure_flops(torch.mm, a, b)
    assert torch.equal(result, torch.full((4, 3), 8.0))
    assert counted.total == 2 * 4 * 8 * 3
    assert sum(counted.by_op.values()) == counted.total


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_flop_counter_equals_closed_form_gemma3_engine(variant) -> None:
    """The closed form holds for the Gemma-3 backbone too (q/k norms are not matmuls)."""
    from vla_core.config import gemma3_policy_config

    config = gemma3_policy_config(
        variant, backbone="gemma3_tiny", expert="gemma3_tiny_expert", vision="siglip_tiny"
    )
    measured = measure_sample_actions_flops(config, num_steps=3, batch_size=2)
    assert measured.total == analytic_flops(config, num_steps=3, batch_size=2).total
