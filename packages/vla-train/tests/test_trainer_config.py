"""Pins the Hydra app: every experiment / policy / task composes through the compose API and
turns into a valid `TrainConfig` (with an `IMFPolicyConfig` for pusht_imf); groups a recipe does
not use are not composed for it; renamed keys fail naming the new key; run names encode
backbone/size/seed; the sweep grid and the submitit launcher compose from config alone."""

from __future__ import annotations

import re
from importlib import resources

import pytest
from omegaconf import OmegaConf

from vla_imf import IMFPolicyConfig
from vla_imf.backbone_config import (
    BACKBONE_CONFIGS,
    AttnResBackboneConfig,
    VanillaBackboneConfig,
)
from vla_train._testing import compose_config, load_config
from vla_train.config import APP_KEYS, check_overrides, from_dict


def _group(name: str) -> list[str]:
    folder = resources.files("vla_train.conf") / name
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


EXPERIMENTS = _group("experiment")
POLICIES = _group("policy")
TASKS = _group("task")


def test_groups_ship_as_package_data() -> None:
    assert set(POLICIES) == {
        "imf_attnres_full",
        "imf_attnres_block",
        "imf_vanilla",
        "flow_matching",
    }
    assert set(TASKS) == {"pusht_lowdim", "pusht_image"}
    assert {"default", "smoke", "sweep", "sweep_cpu", "report"} <= set(EXPERIMENTS)
    assert set(_group("logger")) == {"tensorboard", "wandb", "swanlab", "none"}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_into_a_train_config(experiment: str) -> None:
    overrides = [f"experiment={experiment}"]
    if compose_config(overrides).recipe == "vla_finetune":
        overrides.append("vla.data.root=/x")
    cfg = compose_config(overrides)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    if cfg.mode != "train":
        return  # experiment=report: composing and resolving is the whole contract
    config = load_config(overrides)
    assert config.recipe == cfg.recipe
    if config.recipe == "vla_finetune":
        # The PushT groups are not composed for fine-tuning.
        assert not {"task", "policy", "eval"} & set(cfg) and config.pusht is None
        return
    assert config.pusht is not None and config.vla is None and "vla" not in cfg
    pcfg = config.pusht.policy
    assert pcfg.backbone.n_emb == cfg.policy.n_emb and pcfg.backbone.n_layer == cfg.policy.n_layer
    assert pcfg.backbone.kind == cfg.policy.backbone
    assert pcfg.horizon == cfg.task.horizon and pcfg.n_action_steps == cfg.task.n_action_steps
    assert list(pcfg.lowdim_keys) == list(cfg.task.lowdim_keys)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("task", TASKS)
def test_every_policy_task_pair_composes(policy: str, task: str) -> None:
    pcfg = load_config([f"policy={policy}", f"task={task}"]).pusht.policy  # type: ignore[union-attr]
    assert pcfg.backbone.kind == compose_config([f"policy={policy}"]).policy.backbone
    assert type(pcfg.backbone) is BACKBONE_CONFIGS[pcfg.backbone.kind]
    assert (len(pcfg.image_keys) > 0) == (task == "pusht_image")
    if policy == "flow_matching":
        assert pcfg.objective == "flow_matching" and pcfg.num_inference_steps == 10
    else:
        assert pcfg.objective == "imf" and pcfg.num_inference_steps == 1


def test_default_is_lowdim_attnres_full() -> None:
    cfg = compose_config([])
    assert cfg.task.name == "pusht_lowdim"
    assert cfg.policy.backbone == "attnres_full" and cfg.policy.objective == "imf"
    assert cfg.logger.backend == "tensorboard"
    assert cfg.mode == "train" and cfg.recipe == "pusht_imf"


def test_run_name_encodes_backbone_size_and_seed() -> None:
    cfg = compose_config(["policy.n_emb=256", "policy.n_layer=12", "seed=42"])
    assert cfg.run_name == "imf_attnres_emb256_layer12_seed42"
    cfg = compose_config(["policy=imf_vanilla", "policy.n_emb=128", "seed=7"])
    assert cfg.run_name.startswith("imf_vanilla_emb128_") and cfg.run_name.endswith("_seed7")


def test_sweep_is_the_seed_grid_and_writes_one_subdir_per_run() -> None:
    cfg = compose_config(["experiment=sweep"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params["policy.n_emb"] == "128,256,384"
    assert params["policy.n_layer"] == "6,12,18"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" or cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.sweep.subdir == cfg.run_name
    assert cfg.hydra.sweep.dir.endswith("sweep_grid")


def test_submitit_launcher_composes_from_config() -> None:
    cfg = compose_config(
        ["experiment=sweep", "hydra/launcher=submitit_slurm", "hydra.launcher.gpus_per_node=1"],
        return_hydra_config=True,
    )
    assert "submitit" in cfg.hydra.launcher._target_.lower()
    assert cfg.hydra.launcher.gpus_per_node == 1


@pytest.mark.parametrize("backend", ["wandb", "swanlab"])
def test_optional_loggers_compose_offline(backend: str) -> None:
    cfg = compose_config([f"logger={backend}"])
    assert cfg.logger.backend == backend and cfg.logger.mode == "offline"


def test_bad_policy_field_names_the_problem() -> None:
    with pytest.raises(ValueError, match="not_a_field"):
        load_config(["+policy.extra.not_a_field=1"])
    with pytest.raises(ValueError, match="n_emb"):
        load_config(["policy.n_emb=100", "policy.n_head=3"])
    with pytest.raises(ValueError, match=r"train\.bogus"):
        load_config(["+train.bogus=1"])


@pytest.mark.parametrize(
    ("override", "new_key"),
    [
        ("+vla.optim.max_steps=3", "train.max_steps"),
        ("+vla.optim.batch_size=4", "train.batch_size"),
        ("+vla.strategy=fsdp2", "parallel.strategy"),
        ("+vla.fsdp_mixed_bf16=true", "parallel.mixed_bf16"),
        ("+vla.checkpoint_every=5", "train.checkpoint_every_steps"),
        ("+vla.log_every=5", "train.log_every_steps"),
        ("+vla.policy.gradient_checkpointing=true", "parallel.activation_checkpointing"),
        ("mode=vla_finetune", "recipe=vla_finetune"),
    ],
)
def test_renamed_keys_fail_naming_the_new_key(override: str, new_key: str) -> None:
    with pytest.raises(ValueError, match=re.escape(new_key)):
        load_config(["experiment=pi05_finetune_tiny", override])


@pytest.mark.parametrize(
    "override",
    [
        "policy.gradient_checkpointing=true",
        "+policy.gradient_checkpointing=true",
        "++policy.gradient_checkpointing=false",
        "+policy.extra.gradient_checkpointing=true",
    ],
)
def test_policy_gradient_checkpointing_fails_naming_parallel_activation_checkpointing(
    override: str,
) -> None:
    match = r"policy\.(extra\.)?gradient_checkpointing -> parallel\.activation_checkpointing"
    with pytest.raises(ValueError, match=match):
        load_config([override])
    with pytest.raises(ValueError, match=match):
        check_overrides(["policy=imf_vanilla", override])
    # The composed dict (e.g. a saved Hydra config) is checked by from_dict too.
    raw = OmegaConf.to_container(compose_config([]), resolve=True)
    assert isinstance(raw, dict)
    raw["policy"]["gradient_checkpointing"] = True
    with pytest.raises(ValueError, match=match):
        from_dict({str(k): v for k, v in raw.items() if k not in APP_KEYS})


def test_flat_policy_group_becomes_the_nested_config() -> None:
    pcfg = load_config(
        [
            "policy=imf_attnres_block",
            "policy.n_emb=64",
            "policy.n_layer=3",
            "policy.action_patch=2",
        ]
    ).pusht.policy  # type: ignore[union-attr]
    backbone = AttnResBackboneConfig(
        kind="attnres_block",
        n_emb=64,
        n_layer=3,
        p_drop_attn=0.01,
        attnres_block_size=4,
        action_patch=2,
    )
    task = compose_config([]).task
    expected = IMFPolicyConfig(
        backbone=backbone,
        action_dim=task.action_dim,
        horizon=task.horizon,
        n_obs_steps=task.n_obs_steps,
        n_action_steps=task.n_action_steps,
        lowdim_keys=tuple(task.lowdim_keys),
        image_keys=tuple(task.image_keys),
        image_shape=tuple(task.image_shape),
        crop_shape=tuple(task.crop_shape) if task.crop_shape else None,
        num_inference_steps=1,
        lowdim_fourier_bands=8,  # the default experiment's `policy.extra`
    )
    assert pcfg == expected
    vanilla = load_config(
        ["policy=imf_vanilla", "+policy.extra.causal_attn=true", "policy.action_patch=1"]
    ).pusht
    assert vanilla is not None and isinstance(vanilla.policy.backbone, VanillaBackboneConfig)
    assert vanilla.policy.backbone.causal_attn is True


def test_field_of_another_backbone_kind_fails_naming_it() -> None:
    with pytest.raises(ValueError, match=r"policy\.attnres_block_size=2 applies to backbone kind"):
        load_config(["policy=imf_vanilla", "+policy.extra.attnres_block_size=2"])
    with pytest.raises(ValueError, match=r"policy\.n_kv_head=2 applies to backbone kind"):
        load_config(["policy=imf_vanilla", "policy.n_kv_head=2"])
    with pytest.raises(ValueError, match=r"policy\.causal_attn=True applies to backbone kind"):
        load_config(["+policy.causal_attn=true"])


def test_help_lists_the_recipes_and_main_knobs() -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "vla_train.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    words = ("recipe: pusht_imf, vla_finetune", "task.dataset.root", "vla.data.root", "max_steps")
    for word in (*words, "parallel.{strategy", "batch_size (global)"):
        assert word in proc.stdout, word
