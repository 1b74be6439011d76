"""Parameter counts on the meta device equal the seed numbers exactly (pi0, action dim 16)."""

from __future__ import annotations

import torch

from vla_core._testing import tiny_pi0_config
from vla_core.counting import (
    analytic_parameter_count,
    count_model_parameters,
    count_parameters,
    main,
)
from vla_core.flops import published_flops_config
from vla_core.pi0 import PI0Model


def test_full_size_pi0_matches_the_seed_numbers() -> None:
    count = count_parameters(published_flops_config())
    assert count.vision == 412_442_352
    assert count.backbone == 2_508_531_712
    assert count.expert_with_lm_head == 574_788_608
    assert count.expert_lm_head == 263_323_648
    assert count.expert == 311_464_960  # what the runnable model allocates
    assert count.projections == 5_576_720
    assert count.other == 0
    assert count.reference_total == 3_501_339_392
    assert count.total == 3_501_339_392 - 263_323_648


def test_meta_count_equals_closed_form_for_pi0_and_pi05() -> None:
    for variant in ("pi0", "pi05"):
        config = published_flops_config().replace(variant=variant)
        assert count_parameters(config) == analytic_parameter_count(config)
        tiny = tiny_pi0_config(variant)
        assert count_parameters(tiny) == analytic_parameter_count(tiny)


def test_model_has_no_expert_lm_head_or_embedding() -> None:
    with torch.device("meta"):
        model = PI0Model(published_flops_config())
    names = [name for name, _ in model.named_parameters()]
    assert not [n for n in names if "lm_head" in n]
    assert [n for n in names if "embed_tokens" in n] == ["embed_tokens.weight"]  # backbone only
    assert sum(p.numel() for p in model.parameters()) == count_model_parameters(model).total


def test_cli_prints_the_seed_numbers(capsys) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    for number in ("412,442,352", "2,508,531,712", "574,788,608", "5,576,720", "3,501,339,392"):
        assert number in out


def test_gemma3_engine_count_equals_closed_form() -> None:
    from vla_core.config import gemma3_policy_config

    for variant in ("pi0", "pi05"):
        tiny = gemma3_policy_config(
            variant, backbone="gemma3_tiny", expert="gemma3_tiny_expert", vision="siglip_tiny"
        )
        assert count_parameters(tiny) == analytic_parameter_count(tiny)
        full = gemma3_policy_config(variant)
        assert count_parameters(full) == analytic_parameter_count(full)
