"""Helpers for tests and benchmarks: compose the app config (Hydra, or straight to a
`TrainConfig`), write a tiny PushT dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vla_train.cli import compose_config, load_config

__all__ = ["compose_config", "load_config", "write_random_walk_dataset"]


def write_random_walk_dataset(
    root: Path, *, n_episodes: int = 3, steps: int = 40, seed: int = 0, image: bool = False
) -> Path:
    """A LeRobot v3 PushT dataset of random-walk gym-pusht rollouts, recorded with the same keys
    as the scripted-expert demos. Seconds to write; for tests of the trainer machinery only."""
    import gym_pusht  # noqa: F401
    import gymnasium as gym

    from vla_train.data import FeatureSpec, LeRobotWriter

    features = {
        "observation.state": FeatureSpec("float32", (2,)),
        "observation.environment_state": FeatureSpec("float32", (16,)),
        "action": FeatureSpec("float32", (2,)),
    }
    if image:
        features["observation.image"] = FeatureSpec("image", (96, 96, 3))
    obs_type = "environment_state_agent_pos"
    writer = LeRobotWriter(root, features, fps=10, task="Push the T-shaped block onto the target.")
    env = gym.make("gym_pusht/PushT-v0", obs_type=obs_type, render_mode="rgb_array")
    rng = np.random.default_rng(seed)
    try:
        for ep in range(n_episodes):
            obs, _ = env.reset(seed=seed + ep)
            cols: dict[str, list[np.ndarray]] = {k: [] for k in features}
            target = np.asarray(obs["agent_pos"], dtype=np.float64)
            for _ in range(steps):
                target = np.clip(target + rng.normal(0.0, 15.0, 2), 0.0, 512.0)
                cols["observation.state"].append(obs["agent_pos"])
                cols["observation.environment_state"].append(obs["environment_state"])
                cols["action"].append(target)
                if image:
                    cols["observation.image"].append(env.unwrapped._render())  # type: ignore[attr-defined]
                obs, *_ = env.step(target.astype(np.float32))
            writer.add_episode(
                {
                    k: np.asarray(v, dtype=np.uint8 if k == "observation.image" else np.float32)
                    for k, v in cols.items()
                }
            )
    finally:
        env.close()
    return Path(writer.finalize())
