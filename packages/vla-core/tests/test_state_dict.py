"""State dicts: config + weights round trips (safetensors + JSON, atomic), and the rename maps to
openpi / lerobot / transformers on synthetic key sets (names from the reference projects)."""

from __future__ import annotations

import json

import pytest
import torch

from vla_core._testing import perturb_adarms, random_actions, random_observation, tiny_pi0_config
from vla_core.config import PI0Config
from vla_core.pi0 import PI0Model
from vla_core.state_dict import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    StateDictMismatchError,
    convert_state_dict,
    export_state_dict,
    load_config,
    load_pretrained,
    load_state_dict,
    rename_map,
    save_config,
    save_pretrained,
    unused_reference_keys,
)

OPENPI_EMBED = "paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"
OPENPI_LM_HEAD = "paligemma_with_expert.paligemma.lm_head.weight"
OPENPI_EXPERT_LM_HEAD = "paligemma_with_expert.gemma_expert.lm_head.weight"


def _model(variant: str = "pi0", seed: int = 0) -> PI0Model:
    torch.manual_seed(seed)
    model = PI0Model(tiny_pi0_config(variant)).eval()
    perturb_adarms(model)
    return model


# ---- config and file round trips ---------------------------------------------------------------


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_config_round_trip(tmp_path, variant) -> None:
    config = tiny_pi0_config(variant, attention_implementation="sdpa", knowledge_insulation=False)
    save_config(config, tmp_path / CONFIG_FILE)
    assert load_config(tmp_path) == config
    assert [p.name for p in tmp_path.iterdir()] == [CONFIG_FILE]  # no temp file left


def test_config_errors_name_the_problem(tmp_path) -> None:
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a vla-core config"):
        load_config(tmp_path)
    payload = {"format": "vla-core/pi0", "format_version": 1, "config": {"bogus_field": 1}}
    (tmp_path / CONFIG_FILE).write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="bogus_field"):
        load_config(tmp_path)
    payload["format_version"] = 99
    (tmp_path / CONFIG_FILE).write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="format_version"):
        load_config(tmp_path)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_save_load_pretrained_round_trip(tmp_path, variant) -> None:
    model = _model(variant)
    target = tmp_path / "ckpt"
    save_pretrained(model, target)
    assert sorted(p.name for p in target.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]

    loaded = load_pretrained(target).eval()
    assert loaded.config == model.config
    expected = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    obs = random_observation(model.config)
    noise = random_actions(model.config)
    assert torch.equal(
        loaded.sample_actions(obs, noise=noise, num_steps=2),
        model.sample_actions(obs, noise=noise, num_steps=2),
    )


def test_save_pretrained_replaces_atomically(tmp_path) -> None:
    target = tmp_path / "ckpt"
    save_pretrained(_model(seed=0), target)
    second = _model(seed=1)
    save_pretrained(second, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp / old dirs left
    loaded = load_pretrained(target)
    assert torch.equal(loaded.embed_tokens.weight, second.embed_tokens.weight)


def test_load_pretrained_overrides_config(tmp_path) -> None:
    save_pretrained(_model(), tmp_path / "ckpt")
    loaded = load_pretrained(tmp_path / "ckpt", attention_implementation="sdpa")
    assert loaded.config.engine.attention_implementation == "sdpa"


# ---- rename maps -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_rename_map_covers_exactly_the_model_keys(variant) -> None:
    config = tiny_pi0_config(variant)
    with torch.device("meta"):
        model = PI0Model(config)
    keys = set(model.state_dict())
    layouts = ["vla", "openpi", "lerobot"] + (["transformers"] if variant == "pi0" else [])
    for layout in layouts:
        table = rename_map(config, layout)
        assert set(table) == keys, layout
        assert len(set(table.values())) == len(table), f"{layout}: two keys map to one name"


def test_rename_map_uses_the_reference_names() -> None:
    """Spot checks against names read from openpi / lerobot 0.6.1 / transformers 5.24."""
    pi0, pi05 = tiny_pi0_config("pi0"), tiny_pi0_config("pi05")
    openpi = rename_map(pi0, "openpi")
    assert openpi["engine.layers.1.backbone.self_attn.q_proj.weight"] == (
        "paligemma_with_expert.paligemma.model.language_model.layers.1.self_attn.q_proj.weight"
    )
    assert openpi["engine.layers.0.expert.mlp.gate_proj.weight"] == (
        "paligemma_with_expert.gemma_expert.model.layers.0.mlp.gate_proj.weight"
    )
    assert openpi["vision_tower.encoder.layers.1.self_attn.out_proj.bias"] == (
        "paligemma_with_expert.paligemma.model.vision_tower.vision_model.encoder.layers.1."
        "self_attn.out_proj.bias"
    )
    assert openpi["multi_modal_projector.weight"] == (
        "paligemma_with_expert.paligemma.model.multi_modal_projector.linear.weight"
    )
    assert openpi["embed_tokens.weight"] == OPENPI_EMBED
    assert (
        openpi["engine.expert_norm.weight"]
        == "paligemma_with_expert.gemma_expert.model.norm.weight"
    )
    assert openpi["action_time_mlp_in.weight"] == "action_time_mlp_in.weight"

    openpi05 = rename_map(pi05, "openpi")
    assert openpi05["engine.layers.1.expert.input_layernorm.dense.weight"] == (
        "paligemma_with_expert.gemma_expert.model.layers.1.input_layernorm.dense.weight"
    )
    assert openpi05["engine.expert_norm.dense.bias"] == (
        "paligemma_with_expert.gemma_expert.model.norm.dense.bias"
    )
    assert openpi05["time_mlp_in.weight"] == "time_mlp_in.weight"
    assert "state_proj.weight" not in openpi05

    lerobot = rename_map(pi0, "lerobot")
    assert all(v == f"model.{openpi[k]}" for k, v in lerobot.items())

    hf = rename_map(pi0, "transformers")
    assert hf["vision_tower.embeddings.patch_embedding.weight"] == (
        "model.vlm.vision_tower.embeddings.patch_embedding.weight"
    )
    assert hf["engine.layers.0.backbone.input_layernorm.weight"] == (
        "model.vlm.language_model.layers.0.input_layernorm.weight"
    )
    assert (
        hf["engine.layers.0.expert.self_attn.o_proj.weight"]
        == "model.dit.layers.0.self_attn.o_proj.weight"
    )
    assert hf["engine.expert_norm.weight"] == "model.dit.norm.weight"
    assert hf["state_proj.bias"] == "embed_action_time.state_proj.bias"
    assert hf["action_time_mlp_out.weight"] == "embed_action_time.action_time_mlp_out.weight"
    assert hf["action_out_proj.weight"] == "action_out_proj.weight"


def test_transformers_layout_is_pi0_only() -> None:
    with pytest.raises(ValueError, match="pi0 only"):
        rename_map(tiny_pi0_config("pi05"), "transformers")


def test_unknown_layout_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown state-dict layout 'jax'"):
        rename_map(tiny_pi0_config(), "jax")


@pytest.mark.parametrize(
    ("variant", "layout"),
    [  # transformers has no pi0.5
        ("pi0", "openpi"),
        ("pi0", "lerobot"),
        ("pi0", "transformers"),
        ("pi05", "openpi"),
        ("pi05", "lerobot"),
    ],
)
def test_round_trip_through_reference_layouts(variant, layout) -> None:
    source = _model(variant, seed=2)
    exported = export_state_dict(source, layout=layout, include_unused=True)
    assert set(unused_reference_keys(source.config, layout)) <= set(exported)
    target = _model(variant, seed=3)
    report = load_state_dict(target, exported, layout=layout)
    # unused reference keys and the tied lm_head are dropped by name, nothing else
    expected_dropped = set(unused_reference_keys(source.config, layout))
    if layout in ("openpi", "lerobot"):
        expected_dropped.add(("model." if layout == "lerobot" else "") + OPENPI_LM_HEAD)
    assert set(report.dropped) == expected_dropped
    for key, value in target.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key


def test_openpi_checkpoint_with_only_the_tied_lm_head() -> None:
    """`safetensors.torch.save_model` keeps `paligemma.lm_head.weight` and drops the embedding."""
    source = _model()
    sd = export_state_dict(source, layout="openpi")
    del sd[OPENPI_EMBED]
    converted = convert_state_dict(sd, source.config, "openpi")
    assert torch.equal(converted.tensors["embed_tokens.weight"], source.embed_tokens.weight)
    assert converted.dropped == [OPENPI_LM_HEAD]


def test_openpi_tied_tensors_that_differ_are_refused() -> None:
    source = _model()
    sd = export_state_dict(source, layout="openpi")
    sd[OPENPI_LM_HEAD] = sd[OPENPI_LM_HEAD] + 1.0
    with pytest.raises(ValueError, match="tied"):
        convert_state_dict(sd, source.config, "openpi")


def test_strict_errors_list_missing_and_unexpected_keys_by_name() -> None:
    source = _model()
    sd = export_state_dict(source, layout="openpi")
    q = "paligemma_with_expert.gemma_expert.model.layers.1.self_attn.q_proj.weight"
    del sd[q]
    sd["paligemma_with_expert.gemma_expert.model.layers.1.self_attn.q_proj.lora_a"] = torch.ones(1)
    with pytest.raises(StateDictMismatchError) as info:
        load_state_dict(_model(), sd, layout="openpi")
    assert info.value.missing == [q]
    assert info.value.unexpected == [
        "paligemma_with_expert.gemma_expert.model.layers.1.self_attn.q_proj.lora_a"
    ]
    assert q in str(info.value) and "lora_a" in str(info.value)

    # non-strict conversion keeps what it can and still reports nothing silently
    converted = convert_state_dict(sd, source.config, "openpi", strict=False)
    assert "engine.layers.1.expert.self_attn.q_proj.weight" not in converted.tensors


def test_shape_mismatch_names_the_key() -> None:
    source = _model()
    sd = export_state_dict(source)
    sd["action_out_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(
        StateDictMismatchError, match=r"action_out_proj\.weight: checkpoint \(3, 3\)"
    ):
        load_state_dict(_model(), sd)


def test_export_rejects_foreign_keys() -> None:
    source = _model()
    sd = dict(source.state_dict())
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(StateDictMismatchError, match=r"extra\.weight"):
        export_state_dict(sd, layout="openpi", config=source.config)


def test_full_size_maps_have_the_reference_key_counts() -> None:
    """openpi's PI0Pytorch has 778 / 813 entries (pi0 / pi0.5) counting both lm_heads."""
    for variant, expected in (("pi0", 778), ("pi05", 813)):
        config = PI0Config(variant=variant)
        extra = 2  # paligemma.lm_head (tied) + gemma_expert.lm_head (unused)
        assert len(rename_map(config, "openpi")) + extra == expected


@pytest.mark.parametrize(
    ("layout", "canonical", "other"),
    [
        ("openpi", ".vision_tower.vision_model.", ".vision_tower."),
        ("lerobot", ".vision_tower.vision_model.", ".vision_tower."),
        ("transformers", "model.vlm.vision_tower.", "model.vlm.vision_tower.vision_model."),
    ],
)
def test_other_siglip_spelling_is_accepted_and_reported(layout, canonical, other) -> None:
    source = _model()
    sd = export_state_dict(source, layout=layout)
    renamed = {
        k.replace(canonical, other, 1) if "vision_tower" in k else k: v for k, v in sd.items()
    }
    assert renamed != sd
    converted = convert_state_dict(renamed, source.config, layout)
    assert len(converted.aliased) == sum("vision_tower" in k for k in sd)
    assert torch.equal(
        converted.tensors["vision_tower.embeddings.patch_embedding.weight"],
        source.vision_tower.embeddings.patch_embedding.weight,
    )
    # both spellings of one tensor at once is ambiguous: reported, not resolved silently
    both = dict(sd)
    key = next(k for k in sd if "vision_tower" in k)
    both[key.replace(canonical, other, 1)] = sd[key]
    with pytest.raises(StateDictMismatchError, match="unexpected"):
        convert_state_dict(both, source.config, layout)


def test_readme_state_dict_example_runs(capsys) -> None:
    """The README "State dicts, counting, FLOPs" example really runs and prints the seed numbers."""
    import re
    from pathlib import Path

    readme = Path(__file__).resolve().parents[1] / "README.md"
    section = readme.read_text().split("## State dicts, counting, FLOPs", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    namespace: dict = {}
    exec(compile(code.group(1), str(readme), "exec"), namespace)
    out = capsys.readouterr().out
    assert "3,501,339,392" in out and "4,379,061,288,960" in out
    assert namespace["report"].dropped == [OPENPI_LM_HEAD]


def test_bf16_round_trip_keeps_the_dtype_policy(tmp_path) -> None:
    torch.manual_seed(0)
    model = PI0Model(tiny_pi0_config("pi0", dtype="bfloat16"))
    save_pretrained(model, tmp_path / "ckpt")
    loaded = load_pretrained(tmp_path / "ckpt")
    for (name, ours), (_, theirs) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), name
    assert loaded.embed_tokens.weight.dtype == torch.bfloat16
    assert loaded.action_in_proj.weight.dtype == torch.float32  # fp32 island


def test_load_pretrained_leaves_torch_init_untouched(tmp_path) -> None:
    torch.manual_seed(0)
    before = torch.nn.Linear(4, 4).weight.detach().clone()
    save_pretrained(_model(), tmp_path / "ckpt")
    load_pretrained(tmp_path / "ckpt")
    torch.manual_seed(0)
    assert torch.equal(torch.nn.Linear(4, 4).weight, before)


class _LearnedFilter(torch.nn.Module):
    """A filter with its own parameter (keeps every token); stands in for a learned pruner."""

    def __init__(self) -> None:
        super().__init__()
        self.temperature = torch.nn.Parameter(torch.tensor([0.5]))

    def forward(self, image_tokens, image_mask, language, language_mask):
        keep = torch.arange(image_tokens.shape[1]).expand(image_tokens.shape[0], -1)
        return image_tokens, image_mask, keep


def test_filter_state_travels_in_the_vla_layout_only(tmp_path) -> None:
    model = _model()
    model.set_image_token_filter(_LearnedFilter())
    with torch.no_grad():
        model.image_token_filter.temperature.fill_(2.0)
    save_pretrained(model, tmp_path / "ckpt")
    with pytest.raises(StateDictMismatchError, match=r"image_token_filter\.temperature"):
        load_pretrained(tmp_path / "ckpt")  # checkpoint holds filter state, no filter given
    loaded = load_pretrained(tmp_path / "ckpt", image_token_filter=_LearnedFilter())
    assert float(loaded.image_token_filter.temperature.detach()) == 2.0
    with pytest.raises(ValueError, match="has no image-token filter"):
        export_state_dict(model, layout="openpi")


def test_full_size_openpi_shapes_match_the_reference_table() -> None:
    """Shapes of openpi's PI0Pytorch state dict (openpi-and-lora.md §5), from a meta-device model."""
    pwe = "paligemma_with_expert"
    lm = f"{pwe}.paligemma.model.language_model.layers.3"
    expert = f"{pwe}.gemma_expert.model.layers.3"
    vision = f"{pwe}.paligemma.model.vision_tower.vision_model"
    expected = {
        f"{vision}.embeddings.patch_embedding.weight": (1152, 3, 14, 14),
        f"{vision}.embeddings.position_embedding.weight": (256, 1152),
        f"{vision}.encoder.layers.3.mlp.fc1.weight": (4304, 1152),
        f"{vision}.encoder.layers.3.self_attn.q_proj.weight": (1152, 1152),
        f"{pwe}.paligemma.model.multi_modal_projector.linear.weight": (2048, 1152),
        OPENPI_EMBED: (257152, 2048),
        OPENPI_LM_HEAD: (257152, 2048),
        f"{lm}.self_attn.q_proj.weight": (2048, 2048),
        f"{lm}.self_attn.k_proj.weight": (256, 2048),
        f"{lm}.mlp.gate_proj.weight": (16384, 2048),
        f"{lm}.mlp.down_proj.weight": (2048, 16384),
        f"{expert}.self_attn.q_proj.weight": (2048, 1024),
        f"{expert}.self_attn.o_proj.weight": (1024, 2048),
        f"{expert}.mlp.up_proj.weight": (4096, 1024),
        f"{expert}.input_layernorm.weight": (1024,),
        OPENPI_EXPERT_LM_HEAD: (257152, 1024),
    }
    with torch.device("meta"):
        model = PI0Model(PI0Config())
        exported = export_state_dict(model, layout="openpi", include_unused=True)
    assert len(exported) == 778
    for key, shape in expected.items():
        assert tuple(exported[key].shape) == shape, key
    with torch.device("meta"):
        pi05 = export_state_dict(PI0Model(PI0Config(variant="pi05")), "openpi", include_unused=True)
    assert len(pi05) == 813
    assert tuple(pi05[f"{expert}.input_layernorm.dense.weight"].shape) == (3072, 1024)
    assert tuple(pi05[f"{expert}.input_layernorm.dense.bias"].shape) == (3072,)


def test_gemma3_engine_round_trips_in_the_vla_layout_only(tmp_path) -> None:
    from vla_core.config import gemma3_policy_config

    config = gemma3_policy_config(
        backbone="gemma3_tiny",
        expert="gemma3_tiny_expert",
        vision="siglip_tiny",
        action_dim=6,
        action_horizon=5,
        max_token_len=12,
        num_cameras=2,
    )
    torch.manual_seed(0)
    model = PI0Model(config).eval()
    save_pretrained(model, tmp_path / "ckpt")
    loaded = load_pretrained(tmp_path / "ckpt")
    assert loaded.config == config
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    for layout in ("openpi", "lerobot", "transformers"):
        with pytest.raises(ValueError, match="Gemma-3"):
            rename_map(config, layout)
