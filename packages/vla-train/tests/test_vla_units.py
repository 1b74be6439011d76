"""Units of the VLA fine-tuning pipeline: tokenizer, normalisation, padding masks, LoRA (merge
equals the adapted forward to fp32 tolerance), freezing, unreachable parameters, the Hydra
experiment composition and config errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from vla_core import PI0Model
from vla_core._testing import random_actions, random_observation, tiny_pi0_config
from vla_train._testing import load_config
from vla_train.config import from_dict
from vla_train.distributed import ShardedEpochSampler
from vla_train.schedule import cosine_with_warmup
from vla_train.vla import (
    LoRAConfig,
    LoRALinear,
    Normalizer,
    PolicyConfig,
    TinyTokenizer,
    VLADataConfig,
    VLADataset,
    apply_freezing,
    apply_lora,
    build_policy,
    merge_lora,
    optimizer_param_groups,
    tokenize_prompts,
    write_synthetic_dataset,
)
from vla_train.vla.policy import freeze_unreachable


def test_tiny_tokenizer_round_trip_and_padding() -> None:
    tok = TinyTokenizer()
    assert tok.vocab_size <= 128  # fits the tiny backbones' vocabulary
    assert (
        tok.decode(tok.encode("Task: pick, State: 12;\nAction: "))
        == "Task: pick, State: 12;\nAction: "
    )
    out = tokenize_prompts(tok, ["ab", "abcdef"], max_len=4)
    assert out.tokens.tolist() == [[1, *tok.encode("ab"), 0], [1, *tok.encode("abc")]]
    assert out.mask.tolist() == [[True, True, True, False], [True] * 4]


def test_normalizer_modes() -> None:
    stats = {"mean": np.array([1.0, -2.0]), "std": np.array([2.0, 0.5]),
             "min": np.array([-3.0, -4.0]), "max": np.array([5.0, 0.0])}  # fmt: skip
    x = np.array([3.0, -1.0])
    assert Normalizer(stats, "mean_std", "s").normalize(x).tolist() == [1.0, 2.0]
    q = Normalizer(stats, "quantiles", "s")  # falls back to min/max without q01/q99
    assert q.normalize(np.array([5.0, -4.0])).tolist() == [1.0, -1.0]
    back = q.unnormalize(torch.tensor([[1.0, -1.0, 0.7]]))  # padded dims dropped
    assert back.tolist() == [[5.0, -4.0]]
    with pytest.raises(KeyError, match="lacks"):
        Normalizer({"mean": np.zeros(2)}, "mean_std", "observation.state")


def test_dataset_pads_and_masks(tmp_path: Path) -> None:
    root = write_synthetic_dataset(tmp_path / "ds", num_episodes=2, episode_length=6, task="go")
    ds = VLADataset(VLADataConfig(str(root)), tokenizer=TinyTokenizer(), image_size=56,
                    action_horizon=4, pad_dim=32, max_token_len=16, variant="pi0")  # fmt: skip
    last = ds[4]  # frame 4 of a 6-frame episode: 2 real actions, 2 past the end
    assert last["images"].shape == (2, 3, 56, 56)
    assert float(last["images"].min()) >= -1.0 and float(last["images"].max()) <= 1.0
    assert last["action_mask"].sum(1).tolist() == [6, 6, 0, 0]
    assert last["state_mask"].sum() == 7 and bool((last["state"][7:] == 0).all())
    assert bool((last["actions"][:, 6:] == 0).all())
    with pytest.raises(ValueError, match="model width"):
        VLADataset(VLADataConfig(str(root)), tokenizer=TinyTokenizer(), image_size=56,
                   action_horizon=4, pad_dim=4, max_token_len=16, variant="pi0")  # fmt: skip


def test_lora_merge_matches_adapted_model() -> None:
    torch.manual_seed(0)
    model = PI0Model(tiny_pi0_config("pi05"))
    adapted = apply_lora(
        model, LoRAConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "down_proj"))
    )
    assert len(adapted) == 2 * 2 * 3  # 2 layers x 2 streams x 3 projections
    for module in model.modules():
        if isinstance(module, LoRALinear):
            torch.nn.init.normal_(module.lora_b, std=0.05)  # zero-init B would hide a wrong merge
            assert not module.base.weight.requires_grad
    obs, actions = random_observation(model.config), random_actions(model.config)
    noise, time = torch.randn_like(actions), torch.tensor([0.3, 0.8])
    model.eval()
    with torch.no_grad():
        before = model(obs, actions, noise, time)
        assert merge_lora(model) == 12
        after = model(obs, actions, noise, time)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="matched no"):
        apply_lora(model, LoRAConfig(targets=("qkv_proj",)))


@pytest.mark.parametrize(
    ("mode", "frozen_prefix", "trained_prefix"),
    [
        ("vision_tower", "vision_tower.", "embed_tokens."),
        ("backbone", "engine.layers.0.backbone.", "vision_tower."),
        ("expert_only", "multi_modal_projector.", "engine.layers.0.expert."),
    ],
)
def test_freezing_modes(mode: str, frozen_prefix: str, trained_prefix: str) -> None:
    model = PI0Model(tiny_pi0_config("pi05"))
    apply_freezing(model, mode)
    params = dict(model.named_parameters())
    assert all(not p.requires_grad for n, p in params.items() if n.startswith(frozen_prefix))
    assert all(p.requires_grad for n, p in params.items() if n.startswith(trained_prefix))
    assert params["action_out_proj.weight"].requires_grad


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_unreachable_parameters_get_no_gradient(variant: str) -> None:
    model = PI0Model(tiny_pi0_config(variant))  # type: ignore[arg-type]
    model(random_observation(model.config), random_actions(model.config)).mean().backward()
    params = dict(model.named_parameters())
    frozen = set(freeze_unreachable(model))
    # Frozen ones get no gradient or an exactly zero one (pi0's joint pass slices the last
    # layer's prefix rows out of one attention output); every other parameter gets a gradient.
    assert all(params[n].grad is None or not params[n].grad.any() for n in frozen)
    assert {n for n, p in params.items() if p.grad is None} <= frozen
    assert all(params[n].grad is not None for n in params if n not in frozen)


def _tiny_gemma3_model() -> PI0Model:
    return build_policy(
        PolicyConfig(
            family="gemma3",
            backbone="gemma3_tiny",
            expert="gemma3_tiny_expert",
            vision="siglip_tiny",
            num_cameras=2,
            action_horizon=4,
            max_token_len=8,
        )
    )


def test_gemma3_backbone_freezing_reaches_its_extra_norms() -> None:
    model = _tiny_gemma3_model()
    assert model.config.engine.family == "gemma3"
    apply_freezing(model, "backbone")
    params = dict(model.named_parameters())
    for name in (
        "engine.layers.0.backbone.self_attn.q_norm.weight",
        "engine.layers.0.backbone.self_attn.k_norm.weight",
        "engine.layers.0.backbone.pre_feedforward_layernorm.weight",
        "engine.layers.0.backbone.post_feedforward_layernorm.weight",
    ):
        assert not params[name].requires_grad, name
    assert params["engine.layers.0.expert.mlp.up_proj.weight"].requires_grad


def test_optimizer_groups_follow_the_model_parts() -> None:
    model = PI0Model(tiny_pi0_config("pi05"))
    apply_freezing(model, "expert_only")
    groups = optimizer_param_groups(model)
    assert [g["name"] for g in groups] == ["expert", "action"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sorted(map(id, trainable)) == sorted(id(p) for g in groups for p in g["params"])


def test_policy_config_rejects_an_unknown_family() -> None:
    with pytest.raises(ValueError, match=r"PolicyConfig.family must be one of .*'llama'"):
        PolicyConfig(family="llama")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown Gemma-3 preset 'gemma_2b'"):
        PolicyConfig(family="gemma3").model_config()


def test_schedule_and_batches_are_pure_functions() -> None:
    # One warmup formula for every recipe since issue #19: (step + 1) / warmup_steps.
    kw = {"warmup_steps": 2, "max_steps": 10, "min_ratio": 0.1}
    assert cosine_with_warmup(0, **kw) == pytest.approx(1 / 2)
    assert cosine_with_warmup(1, **kw) == pytest.approx(1.0)
    assert cosine_with_warmup(2, **kw) == pytest.approx(1.0)
    assert cosine_with_warmup(10, **kw) == pytest.approx(0.1)
    # One sampler for every recipe: the global batch of each step is the same whatever the
    # number of processes (rank r holds its rows r, r + W, ...), so N-process runs see the
    # 1-process batches.
    one = ShardedEpochSampler(10, 4, rank=0, world_size=1, seed=0)
    two = [ShardedEpochSampler(10, 2, rank=r, world_size=2, seed=0) for r in range(2)]
    assert len(one) == len(two[0]) == 2
    for epoch in (0, 3):
        for a, b, c in zip(one.batches(epoch), two[0].batches(epoch), two[1].batches(epoch)):
            assert a[0::2] == b and a[1::2] == c


def test_hydra_experiments_compose_into_configs() -> None:
    for name, variant in [("pi05_finetune_tiny", "pi05"), ("pi0_finetune_tiny", "pi0"),
                          ("pi05_finetune", "pi05"), ("pi0_finetune", "pi0")]:  # fmt: skip
        config = load_config([f"experiment={name}", "vla.data.root=/x"])
        assert config.recipe == "vla_finetune" and config.vla is not None
        assert config.vla.policy.variant == variant and config.pusht is None
        assert not config.train.ema.enabled
    # Activation checkpointing is a parallelize choice, not a model or policy field.
    full = load_config(["experiment=pi05_finetune", "vla.data.root=/x"])
    assert full.parallel.activation_checkpointing is True
    assert full.vla is not None and "gradient_checkpointing" not in str(full.vla.policy)
    base = {"recipe": "vla_finetune", "train": {}, "vla": {"data": {"root": "/x"}}}
    with pytest.raises(ValueError, match=r"vla\.policy\.varient"):
        from_dict({**base, "vla": {"policy": {"varient": "pi0"}, "data": {"root": "/x"}}})
    with pytest.raises(ValueError, match=r"vla\.data\.root is required"):
        from_dict({**base, "vla": {"policy": {}, "data": {"root": None}}})
    with pytest.raises(ValueError, match="not used by recipe=vla_finetune"):
        from_dict({**base, "vla": {"policy": {}, "data": {"root": "/x"}}, "task": {}})
    with pytest.raises(ValueError, match="freeze"):
        PolicyConfig(freeze="vision")


@pytest.mark.parametrize("layout", ["openpi", "lerobot"])
def test_build_policy_loads_reference_layouts_strictly(tmp_path: Path, layout: str) -> None:
    from safetensors.torch import save_file

    from vla_core import export_state_dict

    policy = PolicyConfig(
        variant="pi05", backbone="gemma_tiny", expert="gemma_tiny_expert", vision="siglip_tiny",
        num_cameras=2, action_horizon=5, max_token_len=12,
    )  # fmt: skip
    source = build_policy(policy, seed=1)
    tensors = {k: v.clone() for k, v in export_state_dict(source, layout).items()}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    weights = str(tmp_path / "w.safetensors")
    loaded = build_policy(dataclasses.replace(policy, pretrained=weights, layout=layout), seed=2)
    a, b = source.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    del tensors[next(iter(tensors))]
    save_file(tensors, str(tmp_path / "broken.safetensors"))
    broken = dataclasses.replace(
        policy, pretrained=str(tmp_path / "broken.safetensors"), layout=layout
    )
    with pytest.raises(KeyError):
        build_policy(broken)
