"""Pins config validation (errors name the offending field), policy -> engine plumbing, JSON round trip."""

import dataclasses
import json

import pytest

from vla_core import (
    ENGINE_FAMILIES,
    GEMMA_PRESETS,
    GemmaConfig,
    JointEngineConfig,
    PI0Config,
    SiglipConfig,
    engine_family,
    gemma3_policy_config,
    gemma_config,
)
from vla_core._testing import tiny_pi0_config
from vla_core.config import ENGINE_CONFIGS


def test_presets_match_the_issue() -> None:
    assert dataclasses.astuple(gemma_config("gemma_2b"))[:6] == (2048, 18, 16384, 8, 1, 256)
    assert dataclasses.astuple(gemma_config("gemma_300m"))[:6] == (1024, 18, 4096, 8, 1, 256)
    vision = SiglipConfig()
    assert (vision.width, vision.depth, vision.mlp_dim, vision.num_patches) == (1152, 27, 4304, 256)
    with pytest.raises(ValueError, match="unknown Gemma preset 'gemma_7b'"):
        gemma_config("gemma_7b")


def test_unknown_attention_implementation_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"one of \('eager', 'sdpa', 'flex', 'fa2'\), got 'flash'"):
        JointEngineConfig(attention_implementation="flash")
    with pytest.raises(ValueError, match="attention_implementation"):
        PI0Config(attention_implementation="garbage")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"variant": "pi1"}, "variant"),
        ({"dtype": "float16"}, "dtype"),
        ({"action_dim": 0}, "action_dim"),
        ({"knowledge_insulation": True}, "knowledge_insulation"),
        ({"time_min_period": 5.0}, "time_min_period"),
    ],
)
def test_policy_field_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PI0Config(**kwargs)


def test_gemma_and_siglip_validation() -> None:
    with pytest.raises(
        ValueError, match=r"num_heads \(6\) must be a multiple of num_kv_heads \(4\)"
    ):
        GemmaConfig(width=8, depth=1, mlp_dim=8, num_heads=6, num_kv_heads=4, head_dim=4)
    with pytest.raises(ValueError, match="head_dim must be even"):
        GemmaConfig(width=8, depth=1, mlp_dim=8, num_heads=2, num_kv_heads=1, head_dim=5)
    with pytest.raises(ValueError, match=r"GemmaConfig\.depth"):
        GemmaConfig(width=8, depth=0, mlp_dim=8, num_heads=2, num_kv_heads=1, head_dim=4)
    with pytest.raises(ValueError, match="image_size"):
        SiglipConfig(image_size=225)


def test_streams_must_share_heads_and_depth() -> None:
    expert = dataclasses.replace(GEMMA_PRESETS["gemma_300m"], num_kv_heads=2, depth=12)
    with pytest.raises(ValueError, match=r"num_kv_heads: backbone 1 != expert 2; depth"):
        JointEngineConfig(expert=expert)


def test_policy_knob_pushes_down_and_engine_value_survives_default() -> None:
    engine = JointEngineConfig(attention_implementation="flex")
    assert PI0Config(engine=engine).engine.attention_implementation == "flex"
    pushed = PI0Config(engine=engine, attention_implementation="eager")
    assert pushed.engine.attention_implementation == "eager"


def test_configs_carry_no_training_knobs_and_old_files_still_load() -> None:
    config = tiny_pi0_config("pi05")
    data = config.to_dict()
    assert "gradient_checkpointing" not in data and "gradient_checkpointing" not in data["engine"]
    with pytest.raises(TypeError, match="gradient_checkpointing"):
        PI0Config(gradient_checkpointing=True)  # type: ignore[call-arg]
    old = {**data, "gradient_checkpointing": True}  # what vla-core 0.1 wrote
    old["engine"] = {**data["engine"], "gradient_checkpointing": True}
    with pytest.warns(DeprecationWarning, match=r"PI0Config.gradient_checkpointing is ignored"):
        assert PI0Config.from_dict(old) == config


def test_max_token_len_default_follows_variant() -> None:
    assert PI0Config().max_token_len == 48
    assert PI0Config(variant="pi05").max_token_len == 200
    assert PI0Config(variant="pi05", max_token_len=64).max_token_len == 64


def test_json_round_trip_and_unknown_keys() -> None:
    config = tiny_pi0_config("pi05", attention_implementation="sdpa", knowledge_insulation=True)
    restored = PI0Config.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    bad = config.to_dict()
    bad["engine"]["backbone"]["widht"] = 3
    with pytest.raises(ValueError, match=r"PI0Config.engine.backbone: \['widht'\]"):
        PI0Config.from_dict(bad)
    with pytest.raises(ValueError, match=r"unknown keys for PI0Config: \['foo'\]"):
        PI0Config.from_dict({**config.to_dict(), "foo": 1})


def test_replace_revalidates() -> None:
    config = tiny_pi0_config()
    assert config.replace(action_dim=3).action_dim == 3
    with pytest.raises(ValueError, match="action_horizon"):
        config.replace(action_horizon=-1)


def _tiny_gemma3_config() -> PI0Config:
    return gemma3_policy_config(
        "pi05", backbone="gemma3_tiny", expert="gemma3_tiny_expert", vision="siglip_tiny"
    )


def test_engine_family_is_an_explicit_field_that_from_dict_dispatches_on() -> None:
    gemma, gemma3 = tiny_pi0_config("pi05"), _tiny_gemma3_config()
    assert (gemma.engine.family, gemma3.engine.family) == ("gemma", "gemma3")
    for config in (gemma, gemma3):
        data = json.loads(json.dumps(config.to_dict()))
        assert engine_family(data["engine"]) == config.engine.family
        restored = PI0Config.from_dict(data)
        assert restored == config
        assert type(restored.engine) is ENGINE_CONFIGS[config.engine.family][0]


def test_dicts_without_family_still_load() -> None:
    """vla-core 0.1 wrote no `family`: a Gemma-3 engine dict is the one with enforce_sliding_window."""
    for config in (tiny_pi0_config("pi0"), _tiny_gemma3_config()):
        data = config.to_dict()
        del data["engine"]["family"]
        assert PI0Config.from_dict(data) == config


def test_wrong_family_is_rejected_naming_the_key() -> None:
    data = tiny_pi0_config().to_dict()
    data["engine"]["family"] = "llama"
    with pytest.raises(ValueError, match=r"PI0Config.engine.family must be one of .*'llama'"):
        PI0Config.from_dict(data)
    with pytest.raises(ValueError, match=r"JointEngineConfig.family must be 'gemma', got 'gemma3'"):
        JointEngineConfig(family="gemma3")
    assert tuple(ENGINE_CONFIGS) == ENGINE_FAMILIES
