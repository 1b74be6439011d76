"""Pins the Hydra app: every experiment / policy / task composes through the compose API and
turns into a valid `IMFPolicyConfig`; run names encode backbone/size/seed; the sweep grid and
the submitit launcher compose from config alone."""

from __future__ import annotations

from importlib import resources

import pytest
from omegaconf import OmegaConf

from vla_train.trainer._testing import compose_config


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
def test_every_experiment_composes_into_a_policy_config(experiment: str) -> None:
    from vla_train.trainer import policy_config

    cfg = compose_config([f"experiment={experiment}"])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    if cfg.mode != "train" or not str(cfg.task.name).startswith("pusht"):
        return  # e.g. experiment=report: composing and resolving is the whole contract
    pcfg = policy_config(cfg)
    assert pcfg.n_emb == cfg.policy.n_emb and pcfg.n_layer == cfg.policy.n_layer
    assert pcfg.horizon == cfg.task.horizon and pcfg.n_action_steps == cfg.task.n_action_steps
    assert list(pcfg.lowdim_keys) == list(cfg.task.lowdim_keys)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("task", TASKS)
def test_every_policy_task_pair_composes(policy: str, task: str) -> None:
    from vla_train.trainer import policy_config

    pcfg = policy_config(compose_config([f"policy={policy}", f"task={task}"]))
    assert pcfg.backbone == compose_config([f"policy={policy}"]).policy.backbone
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
    assert cfg.mode == "train"


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
    from vla_train.trainer import policy_config

    cfg = compose_config(["+policy.extra.not_a_field=1"])
    with pytest.raises(ValueError, match="not_a_field"):
        policy_config(cfg)
    cfg = compose_config(["policy.n_emb=100", "policy.n_head=3"])
    with pytest.raises(ValueError, match="n_emb"):
        policy_config(cfg)
