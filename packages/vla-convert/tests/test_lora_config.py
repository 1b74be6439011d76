"""Per-tower / per-module LoRA declarations: ranks from shapes, alpha declared or from a variant,
contradictions and unused declarations refused with the tower, module and leaf named."""

from __future__ import annotations

import dataclasses
import warnings

import pytest

from vla_convert._testing import full_pi0_dims, tiny_dims
from vla_convert.dims import OpenpiDims
from vla_convert.errors import LoraConfigError, ModelMismatchError
from vla_convert.lora import LoraSpec
from vla_convert.lora_config import LoraDeclaration, TowerLora, resolve_tower_loras


def _dims(
    backbone: tuple[int | None, int | None], expert: tuple[int | None, int | None]
) -> OpenpiDims:
    """tiny dims with (attn rank, ffn rank) per tower."""
    d = tiny_dims(pi05=True)
    return dataclasses.replace(
        d,
        paligemma=dataclasses.replace(
            d.paligemma, attn_lora_rank=backbone[0], ffn_lora_rank=backbone[1]
        ),
        expert=dataclasses.replace(d.expert, attn_lora_rank=expert[0], ffn_lora_rank=expert[1]),
    )


def test_declaration_parsing() -> None:
    decl = LoraDeclaration.parse("tower=expert, module=attn,rank=32,alpha=16,rslora=true")
    assert decl == LoraDeclaration("expert", "attn", 32, 16.0, True)
    assert LoraDeclaration.parse("alpha=8") == LoraDeclaration(alpha=8.0)
    for bad, match in [
        ("tower=head", "tower must be one of"),
        ("module=mlp", "module must be one of"),
        ("rank=x", "bad value for rank"),
        ("rank=0", "rank must be positive"),
        ("alpha=-1", "alpha must be a positive"),
        ("rslora=maybe", "bad value for rslora"),
        ("scale=2", "bad LoRA declaration item"),
        ("rank=2,rank=3", "sets rank twice"),
    ]:
        with pytest.raises(ValueError, match=match):
            LoraDeclaration.parse(bad)


def test_per_tower_and_per_module_ranks_and_alphas() -> None:
    dims = _dims((4, 2), (3, 5))  # every tower / module its own rank
    backbone, expert = resolve_tower_loras(
        dims,
        [
            LoraDeclaration("backbone", alpha=8.0),  # rank from shapes
            LoraDeclaration("expert", "attn", rank=3, alpha=6.0, rslora=True),
        ],
    )
    assert backbone == TowerLora(LoraSpec(4, 8.0), 2)
    assert expert == TowerLora(LoraSpec(3, 6.0, True), 5)
    assert expert.attn is not None and expert.attn.scale == pytest.approx(6.0 / 3**0.5)
    assert backbone.record() == {
        "attn": {"rank": 4, "alpha": 8.0, "rslora": False, "scale": 2.0},
        "ffn": {"rank": 2, "scale": 1.0},
    }


def test_most_specific_declaration_wins_and_ties_conflict() -> None:
    dims = _dims((4, 4), (4, 4))
    decls = [LoraDeclaration(alpha=4.0), LoraDeclaration("expert", "attn", alpha=16.0)]
    backbone, expert = resolve_tower_loras(dims, decls)
    assert backbone.attn == LoraSpec(4, 4.0) and expert.attn == LoraSpec(4, 16.0)
    clash = [LoraDeclaration("expert", alpha=1.0), LoraDeclaration(module="attn", alpha=2.0)]
    with pytest.raises(LoraConfigError, match="conflicting LoRA declarations for expert attn"):
        resolve_tower_loras(dims, clash)


def test_rank_contradicting_the_shapes_is_refused() -> None:
    dims = _dims((4, 2), (4, 4))
    with pytest.raises(LoraConfigError, match=r"backbone ffn: declared LoRA rank 4 .*rank 2"):
        resolve_tower_loras(dims, LoraSpec(4, 8.0))  # one spec for everything: ffn rank differs
    with pytest.raises(LoraConfigError, match=r"expert attn: .*rank 8.*q_einsum_1/lora_a"):
        resolve_tower_loras(dims, [LoraDeclaration(alpha=1.0), LoraDeclaration("expert", rank=8)])


def test_alpha_is_never_guessed_but_ffn_needs_none() -> None:
    with pytest.raises(LoraConfigError, match=r"backbone attention .* rank 4 .*not stored"):
        resolve_tower_loras(_dims((4, 4), (None, None)), None)
    ffn_only = _dims((None, 3), (None, None))
    assert resolve_tower_loras(ffn_only, None)[0] == TowerLora(None, 3)
    with pytest.warns(UserWarning, match="FeedForward LoRA is never scaled"):
        resolve_tower_loras(ffn_only, [LoraDeclaration("backbone", "ffn", alpha=7.0)])


def test_unused_declarations_are_refused() -> None:
    with pytest.raises(LoraConfigError, match="match no adapters"):
        resolve_tower_loras(tiny_dims(), LoraSpec(4, 4.0))  # no adapters at all
    with pytest.raises(LoraConfigError, match=r"tower=expert.*match no adapters"):
        resolve_tower_loras(
            _dims((4, 4), (None, None)),
            [LoraDeclaration("backbone", alpha=4.0), LoraDeclaration("expert", alpha=4.0)],
        )


def test_variants_are_checked_against_the_tensors() -> None:
    full = full_pi0_dims(lora=True)
    backbone, expert = resolve_tower_loras(full, None, ("gemma_2b_lora", "gemma_300m_lora"))
    assert backbone.attn == LoraSpec(16, 16.0) and expert.attn == LoraSpec(32, 32.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_tower_loras(full_pi0_dims(lora=False), None, ("gemma_2b", "gemma_300m"))
    with pytest.raises(ModelMismatchError, match=r"gemma_2b'.*width 48 \(variant says 2048\)"):
        resolve_tower_loras(tiny_dims(), None, ("gemma_2b", None))
    with pytest.raises(ModelMismatchError, match="expert was declared as openpi variant"):
        resolve_tower_loras(full, None, ("gemma_2b_lora", "gemma_2b_lora"))
    with pytest.raises(LoraConfigError, match="'gemma_2b_lora' but the checkpoint has no LoRA"):
        resolve_tower_loras(full_pi0_dims(lora=False), None, ("gemma_2b_lora", None))
    with pytest.raises(LoraConfigError, match="variant 'gemma_2b' has no LoRA"):
        resolve_tower_loras(full, None, ("gemma_2b", "gemma_300m_lora"))
    explicit = resolve_tower_loras(
        full, [LoraDeclaration("backbone", alpha=8.0)], ("gemma_2b_lora", "gemma_300m_lora")
    )
    assert explicit[0].attn == LoraSpec(16, 8.0)  # a declaration beats the variant's alpha
