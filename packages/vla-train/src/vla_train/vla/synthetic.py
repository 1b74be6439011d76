"""A small generated LeRobot v3 dataset for VLA fine-tuning tests and the tiny experiments:
two cameras, a state vector and an action chunk that depends on the state, one task prompt.

Each episode moves a point along a smooth random curve; `action[t] = state[t+1] − state[t]`
(padded dims follow deterministic functions of the first two), and both cameras draw the point as
a bright square, so the images, the state and the actions all carry the same signal.
`video=True` stores the cameras as mp4 (`dtype: "video"`, see `LeRobotWriter`), as published
LeRobot datasets do (Hydra: `vla.synthetic.video=true`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vla_train.data import FeatureSpec, LeRobotWriter

__all__ = ["write_synthetic_dataset"]


def write_synthetic_dataset(
    root: str | Path,
    *,
    num_episodes: int = 4,
    episode_length: int = 16,
    image_size: int = 32,
    state_dim: int = 7,
    action_dim: int = 6,
    cameras: tuple[str, ...] = ("observation.images.top", "observation.images.wrist"),
    task: str = "move the red square to the corner",
    seed: int = 0,
    overwrite: bool = True,
    video: bool = False,
) -> Path:
    if state_dim < 2 or action_dim < 2:
        raise ValueError(f"state_dim / action_dim must be >= 2, got {state_dim} / {action_dim}")
    rng = np.random.default_rng(seed)
    features = {key: FeatureSpec("image", (image_size, image_size, 3)) for key in cameras}
    features["observation.state"] = FeatureSpec("float32", (state_dim,))
    features["action"] = FeatureSpec("float32", (action_dim,))
    writer = LeRobotWriter(
        Path(root), features, fps=10, task=task, overwrite=overwrite, video=video
    )
    for _ in range(num_episodes):
        t = np.linspace(0.0, 1.0, episode_length + 1)
        start, goal = rng.uniform(0.15, 0.85, 2), rng.uniform(0.15, 0.85, 2)
        bend = rng.normal(0.0, 0.1, 2)
        path = start + (goal - start) * t[:, None] + bend * np.sin(np.pi * t)[:, None]  # [T+1, 2]
        extra = [np.sin(3 * path[:, 0]), np.cos(3 * path[:, 1]), path[:, 0] * path[:, 1]]
        full = np.stack([path[:, 0], path[:, 1], *extra, *([t] * state_dim)], axis=1)[:, :state_dim]
        state = full[:-1]
        delta = np.diff(full, axis=0)
        action = np.concatenate([delta, np.zeros((episode_length, action_dim))], axis=1)
        action = action[:, :action_dim] * 10.0
        frames = {}
        for c, key in enumerate(cameras):
            images = np.zeros((episode_length, image_size, image_size, 3), dtype=np.uint8)
            images[..., 2] = 40 + 30 * c
            for i, (x, y) in enumerate(path[:-1]):
                px, py = int(x * (image_size - 4)), int(y * (image_size - 4))
                if c == 1:  # the "wrist" camera sees the point mirrored
                    px = image_size - 4 - px
                images[i, py : py + 4, px : px + 4, 0] = 255
            frames[key] = images
        frames["observation.state"] = state.astype(np.float32)
        frames["action"] = action.astype(np.float32)
        writer.add_episode(frames)
    return writer.finalize()
