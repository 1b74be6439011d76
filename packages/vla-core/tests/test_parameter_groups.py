"""Pins `PI0Model.parameter_groups()` (a partition of the parameters, same parts for both engine
families) and `unreachable_parameters()` (exactly the parameters the action loss gives no gradient,
Gemma-3's q-norm and sandwich norms included)."""

from __future__ import annotations

import pytest
import torch

from vla_core import PARAMETER_GROUPS, PI0Model, gemma3_policy_config
from vla_core._testing import perturb_adarms, random_actions, random_observation, tiny_pi0_config


def tiny_config(family: str, variant: str, **changes):
    if family == "gemma":
        return tiny_pi0_config(variant, attention_implementation="eager", **changes)
    return gemma3_policy_config(
        variant,
        backbone="gemma3_tiny",
        expert="gemma3_tiny_expert",
        vision="siglip_tiny",
        attention_implementation="eager",
        num_cameras=2,
        action_horizon=4,
        action_dim=6,
        state_dim=5,
        max_token_len=8,
        **changes,
    )


CASES = [(f, v) for f in ("gemma", "gemma3") for v in ("pi0", "pi05")]


@pytest.mark.parametrize(("family", "variant"), CASES)
def test_groups_partition_the_parameters(family: str, variant: str) -> None:
    model = PI0Model(tiny_config(family, variant))
    groups = model.parameter_groups()
    assert tuple(groups) == PARAMETER_GROUPS
    names = [name for group in groups.values() for name in group]
    assert len(names) == len(set(names))
    assert set(names) == {name for name, _ in model.named_parameters()}
    assert groups["image_token_filter"] == {}
    assert all(n.startswith("vision_tower.") for n in groups["vision"])
    assert all(".expert." in n or n.startswith("engine.expert_norm.") for n in groups["expert"])
    assert "embed_tokens.weight" in groups["language"]
    assert "action_out_proj.weight" in groups["action"]
    if family == "gemma3":
        assert "engine.layers.0.backbone.self_attn.q_norm.weight" in groups["language"]


@pytest.mark.parametrize(("family", "variant"), CASES)
def test_unreachable_parameters_are_exactly_those_without_gradient(
    family: str, variant: str
) -> None:
    torch.manual_seed(0)
    model = PI0Model(tiny_config(family, variant))
    if variant == "pi05":
        perturb_adarms(model, std=0.1)
    config = model.config
    model(random_observation(config), random_actions(config)).mean().backward()
    unreachable = model.unreachable_parameters()
    params = dict(model.named_parameters())
    assert set(unreachable) <= set(params)
    no_grad = {n for n, p in params.items() if p.grad is None or not p.grad.any()}
    assert no_grad == set(unreachable)
    if family == "gemma3":
        last = len(model.engine.layers) - 1
        for sub in ("self_attn.q_norm", "pre_feedforward_layernorm", "post_feedforward_layernorm"):
            assert f"engine.layers.{last}.backbone.{sub}.weight" in unreachable
        assert f"engine.layers.{last}.backbone.self_attn.k_norm.weight" not in unreachable


@pytest.mark.parametrize("family", ["gemma", "gemma3"])
def test_knowledge_insulation_makes_the_whole_vlm_unreachable(family: str) -> None:
    model = PI0Model(tiny_config(family, "pi05", knowledge_insulation=True))
    groups = model.parameter_groups()
    vlm = {**groups["vision"], **groups["projector"], **groups["language"]}
    assert set(model.unreachable_parameters()) == set(vlm)
