"""PushT demonstrations without a hub: a scripted expert on gym-pusht, dataset generation in
the LeRobot v3.0 layout, a cached default dataset, and episode pictures."""

from vla_train.pusht.episodes import Episode, make_env, run_expert_episode
from vla_train.pusht.expert import ExpertConfig, Primitive, PushTExpert, pose_error
from vla_train.pusht.generate import (
    cache_dir,
    default_dataset_path,
    ensure_default_dataset,
    generate_dataset,
)
from vla_train.pusht.sim import PushTSim, SimState, snapshot

__all__ = [
    "Episode",
    "ExpertConfig",
    "Primitive",
    "PushTExpert",
    "PushTSim",
    "SimState",
    "cache_dir",
    "default_dataset_path",
    "ensure_default_dataset",
    "generate_dataset",
    "make_env",
    "pose_error",
    "run_expert_episode",
    "snapshot",
]
