"""Pins the Gemma-3 backbone + Gemma expert engine (CPU fp32, tiny configs).

- one backbone stack ≡ transformers' `Gemma3TextModel` (independent reference) on every backend,
  which also pins q/k norms, sandwich norms, per-layer RoPE bases and `query_pre_attn_scalar`;
- eager ≡ sdpa ≡ flex on both streams, unequal lengths, GQA, padding, AdaRMS (valid rows only);
- joint ≡ prefix cache + suffix; per-layer RoPE base captured for both streams;
- sliding windows deliberately not applied; checkpointing bit-identical with one recompute;
- config plumbing through `PI0Config`, and the 4B preset's parameter count on meta.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

import vla_core.layers as layers_module
from vla_core import PI0Model, apply_activation_checkpointing, is_activation_checkpointed
from vla_core._testing import random_actions, random_observation
from vla_core.config import (
    GEMMA3_EXPERT_PRESETS,
    GEMMA3_PRESETS,
    Gemma3Config,
    Gemma3EngineConfig,
    gemma3_policy_config,
)
from vla_core.gemma3 import Gemma3JointEngine
from vla_core.layers import JointDecoderLayer, RMSNorm, rope_cos_sin

BACKENDS = ("eager", "sdpa", "flex")
TINY = GEMMA3_PRESETS["gemma3_tiny"]
TINY_EXPERT = GEMMA3_EXPERT_PRESETS["gemma3_tiny_expert"]


def engine_config(attention: str = "eager", **backbone_changes):
    backbone = dataclasses.replace(TINY, **backbone_changes) if backbone_changes else TINY
    return Gemma3EngineConfig(
        backbone=backbone, expert=TINY_EXPERT, attention_implementation=attention
    )


@torch.no_grad()
def perturb(module: nn.Module, std: float = 0.1, seed: int = 0) -> None:
    """Randomise the zero-initialised norm weights and AdaRMS `dense` so they matter."""
    gen = torch.Generator().manual_seed(seed)
    for sub in module.modules():
        if isinstance(sub, RMSNorm):
            params = [sub.weight] if sub.dense is None else [sub.dense.weight, sub.dense.bias]
            for param in params:
                assert param is not None
                param.add_(torch.randn(param.shape, generator=gen) * std)


def build_engine(config: Gemma3EngineConfig, state: dict | None = None) -> Gemma3JointEngine:
    torch.manual_seed(0)
    engine = Gemma3JointEngine(config, expert_cond_dim=TINY_EXPERT.width)
    if state is None:
        perturb(engine)
    else:
        engine.load_state_dict(state)
    return engine


def joint_inputs(prefix_len: int = 11, suffix_len: int = 5, batch: int = 2, seed: int = 1):
    """Unequal stream lengths, the last sample's prompt right-padded by 3; pi0.5 suffix layout."""
    gen = torch.Generator().manual_seed(seed)
    prefix = torch.randn(batch, prefix_len, TINY.width, generator=gen)
    suffix = torch.randn(batch, suffix_len, TINY_EXPERT.width, generator=gen)
    cond = torch.randn(batch, TINY_EXPERT.width, generator=gen)
    prefix_pad = torch.ones(batch, prefix_len, dtype=torch.bool)
    prefix_pad[-1, -3:] = False
    suffix_pad = torch.ones(batch, suffix_len, dtype=torch.bool)
    prefix_ar = torch.zeros(batch, prefix_len, dtype=torch.bool)
    suffix_ar = torch.zeros(batch, suffix_len, dtype=torch.bool)
    suffix_ar[:, 0] = True
    prefix_pos = torch.cumsum(prefix_pad.long(), 1) - 1
    suffix_pos = prefix_pad.long().sum(1, keepdim=True) + torch.cumsum(suffix_pad.long(), 1) - 1
    return {
        "prefix": prefix,
        "suffix": suffix,
        "cond": cond,
        "prefix_masks": (prefix_pad, prefix_ar, prefix_pos),
        "suffix_masks": (suffix_pad, suffix_ar, suffix_pos),
    }


def run_joint(engine, inputs):
    (pp, pa, ppos), (sp, sa, spos) = inputs["prefix_masks"], inputs["suffix_masks"]
    return engine(
        inputs["prefix"],
        inputs["suffix"],
        pad_mask=torch.cat([pp, sp], 1),
        ar_mask=torch.cat([pa, sa], 1),
        positions=torch.cat([ppos, spos], 1),
        expert_cond=inputs["cond"],
    )


def run_cached(engine, inputs):
    (pp, pa, ppos), (sp, sa, spos) = inputs["prefix_masks"], inputs["suffix_masks"]
    filled = engine(inputs["prefix"], None, pad_mask=pp, ar_mask=pa, positions=ppos)
    out = engine(
        None,
        inputs["suffix"],
        pad_mask=sp,
        ar_mask=sa,
        positions=spos,
        cache=filled.cache,
        expert_cond=inputs["cond"],
    )
    return filled.prefix, out.suffix


# ---- independent reference: transformers' Gemma3TextModel -------------------------------------


def hf_gemma3(backbone: Gemma3Config, implementation: str):
    from transformers import Gemma3TextConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3TextModel

    hf_config = Gemma3TextConfig(
        vocab_size=backbone.vocab_size,
        hidden_size=backbone.width,
        intermediate_size=backbone.mlp_dim,
        num_hidden_layers=backbone.depth,
        num_attention_heads=backbone.num_heads,
        num_key_value_heads=backbone.num_kv_heads,
        head_dim=backbone.head_dim,
        query_pre_attn_scalar=backbone.query_pre_attn_scalar,
        sliding_window=512,  # > sequence: windows never bite in the reference either
        layer_types=list(backbone.layer_types or ()),
        rms_norm_eps=backbone.rms_norm_eps,
        hidden_activation="gelu_pytorch_tanh",
        attn_implementation=implementation,
    )
    torch.manual_seed(3)
    model = Gemma3TextModel(hf_config).eval()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(4)
        for param in model.parameters():  # norms are zero-initialised: make every weight matter
            param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    return model


def load_backbone_from_hf(engine: Gemma3JointEngine, hf_model: nn.Module) -> None:
    renamed = {}
    for name, tensor in hf_model.state_dict().items():
        if name.startswith("layers."):
            _, index, rest = name.split(".", 2)
            renamed[f"layers.{index}.backbone.{rest}"] = tensor
        elif name == "norm.weight":
            renamed["backbone_norm.weight"] = tensor
    missing, unexpected = engine.load_state_dict(renamed, strict=False)
    assert not unexpected
    assert all(".expert." in k or k.startswith("expert_norm.") for k in missing), missing


def backbone_only(engine: Gemma3JointEngine, hidden: torch.Tensor) -> torch.Tensor:
    """Causal prefix-only pass (every token its own block) = a plain decoder."""
    batch, length, _ = hidden.shape
    ones = torch.ones(batch, length, dtype=torch.bool)
    positions = torch.arange(length).expand(batch, length)
    return engine(hidden, None, pad_mask=ones, ar_mask=ones, positions=positions).prefix


@pytest.mark.parametrize("implementation", BACKENDS)
def test_backbone_matches_transformers_gemma3(implementation) -> None:
    hf = hf_gemma3(TINY, "eager")
    engine = build_engine(engine_config(implementation))
    load_backbone_from_hf(engine, hf)
    hidden = torch.randn(2, 9, TINY.width, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        reference = hf(inputs_embeds=hidden).last_hidden_state
        ours = backbone_only(engine, hidden)
    error = (ours - reference).abs().max().item()
    print(
        f"{implementation}: max |ours - Gemma3TextModel| = {error:.2e} (|ref| {reference.abs().max():.2f})"
    )
    assert error <= 1e-5


def test_head_dim_scale_would_fail_the_reference() -> None:
    """The reference test above can fail: the tiny preset's query_pre_attn_scalar (24) differs from
    head_dim (16), and using head_dim**-0.5 instead moves the output far beyond tolerance."""
    assert TINY.query_pre_attn_scalar != TINY.head_dim
    hf = hf_gemma3(TINY, "eager")
    wrong = build_engine(engine_config("eager", query_pre_attn_scalar=TINY.head_dim))
    load_backbone_from_hf(wrong, hf)
    hidden = torch.randn(2, 9, TINY.width, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        reference = hf(inputs_embeds=hidden).last_hidden_state
        error = (backbone_only(wrong, hidden) - reference).abs().max().item()
    assert error > 1e-3


@pytest.mark.parametrize("implementation", BACKENDS)
def test_scale_is_passed_explicitly_to_every_backend(implementation, monkeypatch) -> None:
    scales: list[float] = []
    attend = layers_module.attend

    def recording_attend(*args, **kwargs):
        scales.append(kwargs["scale"])
        assert kwargs["implementation"] == implementation
        return attend(*args, **kwargs)

    monkeypatch.setattr(layers_module, "attend", recording_attend)
    engine = build_engine(engine_config(implementation))
    with torch.no_grad():
        run_joint(engine, joint_inputs())
    assert scales == [24.0**-0.5] * TINY.depth
    assert all(not math.isclose(s, TINY.head_dim**-0.5) for s in scales)


# ---- backends, cache, RoPE ----------------------------------------------------------------------


def test_backends_agree_on_both_streams_with_unequal_lengths() -> None:
    reference = build_engine(engine_config("eager"))
    state = reference.state_dict()
    inputs = joint_inputs()
    valid_prefix = inputs["prefix_masks"][0]
    with torch.no_grad():
        ref_joint = run_joint(reference, inputs)
        ref_cached = run_cached(reference, inputs)
        for implementation in ("sdpa", "flex"):
            engine = build_engine(engine_config(implementation), state)
            joint = run_joint(engine, inputs)
            cached = run_cached(engine, inputs)
            errors = {
                "joint prefix": (joint.prefix - ref_joint.prefix)[valid_prefix].abs().max(),
                "joint suffix": (joint.suffix - ref_joint.suffix).abs().max(),
                "cached prefix": (cached[0] - ref_cached[0])[valid_prefix].abs().max(),
                "cached suffix": (cached[1] - ref_cached[1]).abs().max(),
            }
            print(implementation, {k: f"{v.item():.1e}" for k, v in errors.items()})
            assert all(v.item() <= 1e-5 for v in errors.values()), errors


@pytest.mark.parametrize("implementation", BACKENDS)
def test_joint_equals_prefix_cache_then_suffix(implementation) -> None:
    engine = build_engine(engine_config(implementation))
    inputs = joint_inputs()
    with torch.no_grad():
        joint = run_joint(engine, inputs)
        prefix_out, suffix_out = run_cached(engine, inputs)
    valid_prefix = inputs["prefix_masks"][0]
    suffix_error = (joint.suffix - suffix_out).abs().max().item()
    prefix_error = (joint.prefix - prefix_out)[valid_prefix].abs().max().item()
    print(f"{implementation}: joint vs cached suffix {suffix_error:.1e}, prefix {prefix_error:.1e}")
    # fp32 rounding only (different matmul shapes); |outputs| ~ 1-10.
    assert suffix_error <= 1e-5 and prefix_error <= 1e-5


def test_per_layer_rope_base_reaches_both_streams() -> None:
    engine = build_engine(engine_config("eager"))
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [
        layer.register_forward_pre_hook(lambda m, args: captured.append(args[2]))
        for layer in engine.layers
    ]
    inputs = joint_inputs()
    positions = torch.cat([inputs["prefix_masks"][2], inputs["suffix_masks"][2]], 1)
    with torch.no_grad():
        joint = run_joint(engine, inputs)
        run_cached(engine, inputs)
    for hook in hooks:
        hook.remove()
    assert engine.rope_bases == (1e4, 1e6)  # sliding, full
    # joint: one rope over [prefix ; suffix] per layer; cached: prefix pass, then suffix pass.
    calls = [(positions, 0), (positions, 1)]
    calls += [(inputs["prefix_masks"][2], 0), (inputs["prefix_masks"][2], 1)]
    calls += [(inputs["suffix_masks"][2], 0), (inputs["suffix_masks"][2], 1)]
    assert len(captured) == len(calls)
    for (cos, sin), (pos, layer) in zip(captured, calls, strict=True):
        base = TINY.rope_base(layer)
        want_cos, want_sin = rope_cos_sin(pos, TINY.head_dim, base)
        assert cos.shape == (2, pos.shape[1], TINY.head_dim // 2)
        assert torch.equal(cos, want_cos) and torch.equal(sin, want_sin)
    # The bases matter for both streams: one base everywhere changes prefix and suffix outputs.
    engine.rope_bases = (1e4, 1e4)
    with torch.no_grad():
        single_base = run_joint(engine, inputs)
    assert (single_base.prefix - joint.prefix).abs().max() > 1e-4
    assert (single_base.suffix - joint.suffix).abs().max() > 1e-4


def test_sliding_window_is_not_enforced() -> None:
    with pytest.raises(ValueError, match="enforce_sliding_window"):
        Gemma3EngineConfig(backbone=TINY, expert=TINY_EXPERT, enforce_sliding_window=True)
    # Two sliding layers with window 4 could not carry token 0 to token 10 if windows applied.
    config = engine_config("sdpa", layer_types=("sliding_attention", "sliding_attention"))
    engine = build_engine(config)
    masks: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_pre_hook(lambda m, args: masks.append(args[3]))
        for layer in engine.layers
    ]
    inputs = joint_inputs()
    with torch.no_grad():
        base = run_joint(engine, inputs).prefix
        inputs["prefix"][:, 0] += 1.0
        moved = run_joint(engine, inputs).prefix
    for hook in hooks:
        hook.remove()
    assert config.backbone.sliding_window == 4
    assert (moved[0, 10] - base[0, 10]).abs().max() > 1e-4
    assert all(torch.equal(mask, masks[0]) for mask in masks)  # one mask for every layer
    assert masks[0][0, 10, 0] and masks[0][0, 0, 10]  # prefix is bidirectional, unwindowed


# ---- checkpointing -------------------------------------------------------------------------------


@pytest.fixture
def layer_calls(monkeypatch):
    counter = {"calls": 0}
    body = JointDecoderLayer.forward

    def counting_forward(self, *args, **kwargs):
        counter["calls"] += 1
        return body(self, *args, **kwargs)

    monkeypatch.setattr(JointDecoderLayer, "forward", counting_forward)
    return counter


def _engine_train_step(checkpointing: bool, layer_calls):
    engine = build_engine(engine_config("sdpa"))
    if checkpointing:  # applied from outside, after construction
        apply_activation_checkpointing(engine, (JointDecoderLayer,))
    engine.train()
    inputs = joint_inputs()
    inputs["prefix"].requires_grad_(True)
    layer_calls["calls"] = 0
    out = run_joint(engine, inputs)
    weight = torch.linspace(-1, 1, out.suffix.numel()).view_as(out.suffix)
    loss = (out.suffix * weight).sum() + out.prefix[inputs["prefix_masks"][0]].pow(2).mean()
    loss.backward()
    grads = {name: p.grad for name, p in engine.named_parameters()}
    grads["<prefix input>"] = inputs["prefix"].grad
    return loss.detach(), grads, layer_calls["calls"]


def test_checkpointing_is_bit_identical_and_recomputes_once(layer_calls) -> None:
    loss_off, grads_off, calls_off = _engine_train_step(False, layer_calls)
    loss_on, grads_on, calls_on = _engine_train_step(True, layer_calls)
    assert calls_off == TINY.depth
    assert calls_on == 2 * TINY.depth
    assert torch.equal(loss_on, loss_off)
    assert grads_on.keys() == grads_off.keys()
    for name, grad in grads_off.items():
        assert grad is not None, name
        assert torch.equal(grads_on[name], grad), name


# ---- policy: plumbing, embeddings, parameters ------------------------------------------------


def tiny_policy_config(**policy_fields):
    fields = {
        "backbone": "gemma3_tiny",
        "expert": "gemma3_tiny_expert",
        "vision": "siglip_tiny",
        "action_dim": 6,
        "state_dim": 7,
        "action_horizon": 5,
        "max_token_len": 12,
        "num_cameras": 2,
    }
    fields.update(policy_fields)
    return gemma3_policy_config(**fields)


def test_policy_level_knobs_reach_the_engine() -> None:
    explicit = tiny_policy_config(attention_implementation="flex")
    # The policy-level knob at its default (None): the explicit engine-level value survives.
    assert explicit.attention_implementation is None
    assert isinstance(explicit.engine, Gemma3EngineConfig)
    assert explicit.engine.attention_implementation == "flex"
    model = PI0Model(explicit)
    assert isinstance(model.engine, Gemma3JointEngine)
    assert all(layer.attention_implementation == "flex" for layer in model.engine.layers)
    assert not any(is_activation_checkpointed(layer) for layer in model.engine.layers)
    apply_activation_checkpointing(model, (JointDecoderLayer,))
    assert all(is_activation_checkpointed(layer) for layer in model.engine.layers)
    # Set at the policy level, it is pushed down.
    pushed = dataclasses.replace(explicit, attention_implementation="eager")
    assert isinstance(pushed.engine, Gemma3EngineConfig)
    assert pushed.engine.attention_implementation == "eager"
    model = PI0Model(pushed)
    assert all(layer.attention_implementation == "eager" for layer in model.engine.layers)
    with pytest.raises(ValueError, match="attention_implementation"):
        tiny_policy_config(attention_implementation="garbage")
    with pytest.raises(ValueError, match="attention_implementation"):
        dataclasses.replace(explicit, attention_implementation="garbage")


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="Gemma3Config"):
        Gemma3EngineConfig(backbone=GEMMA3_EXPERT_PRESETS["gemma3_tiny_expert"], expert=TINY_EXPERT)
    with pytest.raises(ValueError, match="rope_max_wavelength"):
        Gemma3EngineConfig(backbone=TINY, expert=TINY_EXPERT, rope_max_wavelength=5e5)
    with pytest.raises(ValueError, match="layer_types"):
        dataclasses.replace(TINY, layer_types=("full_attention",))
    with pytest.raises(ValueError, match="layer_types"):
        dataclasses.replace(TINY, layer_types=("global", "full_attention"))
    with pytest.raises(ValueError, match="query_pre_attn_scalar"):
        dataclasses.replace(TINY, query_pre_attn_scalar=0)
    with pytest.raises(ValueError, match="num_kv_heads"):
        Gemma3EngineConfig(
            backbone=TINY, expert=dataclasses.replace(TINY_EXPERT, num_heads=4, num_kv_heads=4)
        )


def test_default_layer_types_match_transformers() -> None:
    from transformers import Gemma3TextConfig

    preset = GEMMA3_PRESETS["gemma3_4b"]
    hf = Gemma3TextConfig(num_hidden_layers=preset.depth)
    assert list(preset.layer_types or ()) == list(hf.layer_types)
    assert preset.layer_types.count("full_attention") == 5  # type: ignore[union-attr]
    assert [preset.rope_base(i) for i in (0, 5)] == [1e4, 1e6]


def test_policy_scales_word_embeddings_once_like_gemma3() -> None:
    from transformers.models.gemma3.modeling_gemma3 import Gemma3TextScaledWordEmbedding

    config = tiny_policy_config(variant="pi05")
    model = PI0Model(config).eval()
    reference = Gemma3TextScaledWordEmbedding(
        TINY.vocab_size, TINY.width, padding_idx=0, embed_scale=TINY.width**0.5
    )
    reference.weight.data.copy_(model.embed_tokens.weight.data)
    obs = random_observation(config)
    with torch.no_grad():
        prefix = model.embed_prefix(obs)
    num_image = prefix.tokens.shape[1] - obs.tokens.shape[1]
    language = prefix.tokens[:, num_image:]
    assert torch.allclose(language, reference(obs.tokens), atol=0, rtol=1e-6)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_policy_joint_equals_cached_and_trains(variant) -> None:
    config = tiny_policy_config(variant=variant, attention_implementation="sdpa")
    torch.manual_seed(0)
    model = PI0Model(config)
    perturb(model.engine)
    obs, actions = random_observation(config), random_actions(config)
    time = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        joint = model.predict_velocity(obs, actions, time, mode="joint")
        cached = model.predict_velocity(obs, actions, time, mode="cached")
        sampled = model.sample_actions(obs, num_steps=2)
    assert (joint - cached).abs().max().item() <= 1e-6
    assert torch.isfinite(sampled).all()
    loss = model(obs, actions, time=time).mean()
    loss.backward()
    assert model.engine.layers[0].backbone.self_attn.q_norm.weight.grad is not None


def test_layer_pairs_are_modules_owning_each_parameter_once() -> None:
    engine = build_engine(engine_config())
    every = list(engine.named_parameters(remove_duplicate=False))
    assert len(every) == len({id(p) for _, p in every})
    in_layers = sum(p.numel() for layer in engine.layers for p in layer.parameters())
    norms = sum(
        p.numel() for m in (engine.backbone_norm, engine.expert_norm) for p in m.parameters()
    )
    assert in_layers + norms == sum(p.numel() for p in engine.parameters())
    names = dict(every)
    for name in (
        "layers.0.backbone.self_attn.q_norm.weight",
        "layers.0.backbone.self_attn.k_norm.weight",
        "layers.0.backbone.pre_feedforward_layernorm.weight",
        "layers.0.backbone.post_feedforward_layernorm.weight",
        "layers.1.expert.input_layernorm.dense.weight",
    ):
        assert name in names, name


def test_4b_preset_parameter_count_on_meta() -> None:
    from transformers import Gemma3TextConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3TextModel

    backbone, expert = GEMMA3_PRESETS["gemma3_4b"], GEMMA3_EXPERT_PRESETS["pi07_expert"]
    config = Gemma3EngineConfig(backbone=backbone, expert=expert)
    with torch.device("meta"):
        engine = Gemma3JointEngine(config, expert_cond_dim=expert.width)
        embedding = nn.Embedding(backbone.vocab_size, backbone.width)
    count = lambda params: sum(p.numel() for p in params)  # noqa: E731
    backbone_params = count(p for n, p in engine.named_parameters() if ".backbone." in n)
    backbone_params += count(engine.backbone_norm.parameters()) + count(embedding.parameters())
    expert_params = count(p for n, p in engine.named_parameters() if ".expert." in n)
    expert_params += count(engine.expert_norm.parameters())

    # Hand-derived closed forms. Backbone layer: q, o (D·H·hd each), k, v (D·Hkv·hd each),
    # q_norm + k_norm (hd each), 4 sandwich norms (D each), GeGLU (3·D·F); + embedding, final norm.
    d, f, h, kv, hd, n, v = 2560, 10_240, 8, 4, 256, 34, 262_208
    per_layer = 2 * d * h * hd + 2 * d * kv * hd + 2 * hd + 4 * d + 3 * d * f
    assert per_layer == 94_382_592
    assert backbone_params == n * per_layer + v * d + d == 3_880_263_168
    # Expert layer: same attention shapes at width 1280, 2 AdaRMS norms (dense: E -> 3·E + bias).
    e, fe = 1280, 5120
    adarms = e * 3 * e + 3 * e
    expert_layer = 2 * e * h * hd + 2 * e * kv * hd + 2 * adarms + 3 * e * fe
    assert expert_params == n * expert_layer + adarms
    print(f"gemma3_4b backbone {backbone_params:,} params; pi07_expert expert {expert_params:,}")

    # Independent: transformers' Gemma3TextModel of the same shape, on meta.
    hf_config = Gemma3TextConfig(
        vocab_size=v,
        hidden_size=d,
        intermediate_size=f,
        num_hidden_layers=n,
        num_attention_heads=h,
        num_key_value_heads=kv,
        head_dim=hd,
    )
    with torch.device("meta"):
        hf = Gemma3TextModel(hf_config)
    assert count(hf.parameters()) == backbone_params


def test_readme_gemma3_example_runs() -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Gemma-3 engine", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile(code.group(1), "README.md", "exec"), namespace)
    model = namespace["model"]
    assert isinstance(model.engine, Gemma3JointEngine)
    assert model.engine.rope_bases == (1e4, 1e6)
    assert torch.isfinite(namespace["loss"])
    assert namespace["actions"].shape == (2, 5, 6)


def test_policy_config_round_trips_through_json(tmp_path) -> None:
    import json

    from vla_core import load_config, save_config

    config = tiny_policy_config(variant="pi05", attention_implementation="flex")
    restored = type(config).from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert isinstance(restored.engine, Gemma3EngineConfig)
    assert isinstance(restored.engine.backbone, Gemma3Config)
    assert restored.engine.backbone.layer_types == ("sliding_attention", "full_attention")
    replaced = config.replace(attention_implementation="eager")
    assert isinstance(replaced.engine, Gemma3EngineConfig)
    assert replaced.engine.attention_implementation == "eager"
    save_config(config, tmp_path / "config.json")
    assert load_config(tmp_path / "config.json") == config
    bad = config.to_dict()
    bad["engine"]["backbone"]["window"] = 3
    with pytest.raises(ValueError, match=r"PI0Config\.engine\.backbone"):
        type(config).from_dict(bad)


def test_bfloat16_policy_keeps_every_norm_in_fp32() -> None:
    config = tiny_policy_config(variant="pi05", dtype="bfloat16")
    model = PI0Model(config)
    norms = [m for m in model.engine.modules() if isinstance(m, RMSNorm)]
    # per layer: backbone 4 sandwich + q/k norms, expert 2 AdaRMS; + 2 final norms
    assert len(norms) == TINY.depth * (6 + 2) + 2
    assert all(p.dtype == torch.float32 for m in norms for p in m.parameters())
    assert model.engine.layers[0].backbone.self_attn.q_proj.weight.dtype == torch.bfloat16
    obs, actions = random_observation(config), random_actions(config)
    loss = model(obs, actions, time=torch.tensor([0.3, 0.8])).mean()
    assert torch.isfinite(loss)


def test_save_and_load_pretrained_round_trip(tmp_path) -> None:
    from vla_core import load_pretrained, save_pretrained

    model = PI0Model(tiny_policy_config(variant="pi05"))
    perturb(model.engine)
    restored = load_pretrained(save_pretrained(model, tmp_path / "ckpt"))
    assert isinstance(restored.engine, Gemma3JointEngine)
    assert restored.config == model.config
    restored_state = restored.state_dict()
    assert restored_state.keys() == model.state_dict().keys()
    assert all(torch.equal(restored_state[k], v) for k, v in model.state_dict().items())
