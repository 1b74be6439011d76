"""The one place where the Hydra config becomes library objects: `IMFPolicyConfig`, the dataset,
the optimizer. Everything downstream receives plain dataclasses / modules, never a DictConfig."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vla_imf import IMFPolicyConfig

CONFIG_MODULE = "vla_train.conf"

# Keys of the `policy` group that are trainer bookkeeping, not IMFPolicyConfig fields.
_POLICY_META = ("tag", "extra")


def compose_config(overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """The app config exactly as `vla-train <overrides>` would see it (Hydra compose API)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def to_plain(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        out = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(out, dict)
        return {str(k): v for k, v in out.items()}
    return dict(cfg)


def policy_config(cfg: DictConfig) -> IMFPolicyConfig:
    """`policy` + `task` groups -> IMFPolicyConfig (validated by its own __post_init__)."""
    policy = to_plain(cfg.policy)
    task = to_plain(cfg.task)
    extra = policy.get("extra") or {}
    fields = {k: v for k, v in policy.items() if k not in _POLICY_META}
    overlap = set(extra) & set(fields)
    if overlap:
        raise ValueError(f"policy.extra repeats keys already set in policy: {sorted(overlap)}")
    fields.update(extra)
    fields.update(
        action_dim=int(task["action_dim"]),
        horizon=int(task["horizon"]),
        n_obs_steps=int(task["n_obs_steps"]),
        n_action_steps=int(task["n_action_steps"]),
        lowdim_keys=tuple(task["lowdim_keys"]),
        image_keys=tuple(task["image_keys"]),
        image_shape=tuple(task["image_shape"]),
        crop_shape=tuple(task["crop_shape"]) if task.get("crop_shape") else None,
    )
    try:
        return IMFPolicyConfig(**fields)
    except TypeError as e:  # unknown field name: say which group it came from
        raise ValueError(f"policy/task config does not match IMFPolicyConfig: {e}") from e


def dataset_root(cfg: DictConfig) -> Path:
    """The dataset folder: `task.dataset.root`, or the embedded default (generated once, cached)."""
    ds = cfg.task.dataset
    if ds.root is not None:
        root = Path(str(ds.root)).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"task.dataset.root={root} does not exist")
        return root
    from vla_train.pusht import ensure_default_dataset

    return Path(
        ensure_default_dataset(
            num_episodes=int(ds.num_episodes),
            seed=int(ds.seed),
            image=bool(ds.image),
            action_noise=float(ds.get("action_noise", 0.0)),
        )
    )


def build_dataset(cfg: DictConfig, root: Path) -> Any:
    from vla_train.data import LeRobotWindowDataset

    task = cfg.task
    keys = (*task.lowdim_keys, *task.image_keys)
    max_eps = task.dataset.max_train_episodes
    episodes = list(range(int(max_eps))) if max_eps is not None else None
    return LeRobotWindowDataset(
        root,
        n_obs_steps=int(task.n_obs_steps),
        horizon=int(task.horizon),
        n_action_steps=int(task.n_action_steps),
        keys=tuple(str(k) for k in keys),
        episodes=episodes,
        current_frame_mask=decision_mask(cfg),
    )


def decision_mask(cfg: DictConfig) -> str | None:
    """`task.dataset.decision_windows`: train only on windows that start where the expert made a
    fresh decision (the column `expert.replanned`), the way the policy is queried."""
    return "expert.replanned" if cfg.task.dataset.get("decision_windows", False) else None


def dagger_config(cfg: DictConfig) -> Any:
    """`task.dagger` -> DaggerConfig (validated; rounds > 0 needs the low-dim PushT task)."""
    from vla_train.pusht.dagger import DaggerConfig

    block = cfg.task.get("dagger")
    fields = to_plain(block) if block is not None else {}
    try:
        config = DaggerConfig(**fields)
    except TypeError as e:  # unknown key
        raise ValueError(f"task.dagger does not match DaggerConfig: {e}") from e
    lowdim = (
        not list(cfg.task.image_keys) and cfg.task.env_obs_type == "environment_state_agent_pos"
    )
    if config.rounds and not lowdim:
        raise ValueError(
            f"task.dagger.rounds={config.rounds}: expert-in-the-loop rounds need the low-dim PushT "
            "task (no image_keys, env_obs_type environment_state_agent_pos)"
        )
    return config


def with_dagger_rounds(demos: Any, run_dir: Path, rounds: int) -> Any:
    """The training set after `rounds` DAgger rounds: the demos plus every round's dataset
    (windows cut the same way)."""
    if rounds == 0:
        return demos
    from torch.utils.data import ConcatDataset

    from vla_train.data import LeRobotWindowDataset
    from vla_train.pusht.dagger import round_dir

    parts = [demos]
    for r in range(1, rounds + 1):
        parts.append(
            LeRobotWindowDataset(
                round_dir(run_dir, r),
                n_obs_steps=demos.n_obs_steps,
                horizon=demos.horizon,
                keys=demos.keys,
                pad_before=demos.pad_before,
                pad_after=demos.pad_after,
                current_frame_mask=demos.current_frame_mask,
            )
        )
    return ConcatDataset(parts)
