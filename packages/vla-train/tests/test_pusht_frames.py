"""The block-frame transform: it recovers the T's pose from gym-pusht's keypoints exactly, the
policy wrapper inverts the dataset transform (absolute and relative actions), and bad frame
names fail naming the key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vla_train._testing import write_random_walk_dataset
from vla_train.pusht.expert import T_KEYPOINTS, to_world
from vla_train.pusht.frames import (
    BlockFrameDataset,
    block_frame_policy,
    block_pose,
    canonical_obs,
    check_frame,
)
from vla_train.pusht.sim import GOAL_POSE

KEYS = ("observation.state", "observation.environment_state")


def test_block_pose_from_keypoints() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        pose = np.array([*rng.uniform(50, 450, 2), rng.uniform(-np.pi, np.pi)])
        keypoints = torch.as_tensor(to_world(pose, T_KEYPOINTS).reshape(-1), dtype=torch.float64)
        origin, rot = block_pose(keypoints)
        torch.testing.assert_close(origin, torch.as_tensor(pose[:2]), rtol=0, atol=1e-9)
        angle = torch.atan2(rot[1, 0], rot[0, 0]).item()
        assert abs(np.angle(np.exp(1j * (angle - pose[2])))) < 1e-9


def test_at_the_goal_the_goal_is_the_t_itself() -> None:
    keypoints = torch.as_tensor(
        to_world(GOAL_POSE, T_KEYPOINTS).reshape(1, -1), dtype=torch.float32
    )
    obs = {
        "observation.state": torch.tensor([[256.0, 256.0]]),
        "observation.environment_state": keypoints,
    }
    out = canonical_obs(obs)
    torch.testing.assert_close(
        out["observation.environment_state"].reshape(8, 2),
        torch.as_tensor(T_KEYPOINTS, dtype=torch.float32),
        rtol=0,
        atol=1e-3,
    )
    torch.testing.assert_close(out["observation.state"], torch.zeros(1, 2), rtol=0, atol=1e-3)


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_walk_dataset(tmp_path_factory.mktemp("walk") / "walk", n_episodes=2)


@pytest.mark.parametrize("relative", [False, True])
def test_policy_wrapper_inverts_the_dataset_transform(walk: Path, relative: bool) -> None:
    from vla_train.data import LeRobotWindowDataset

    windows = LeRobotWindowDataset(walk, n_obs_steps=2, horizon=16, keys=KEYS)
    frame = BlockFrameDataset(windows, relative=relative)
    for i in (0, 7, len(windows) - 1):
        world, block = windows[i], frame[i]
        # A stand-in policy returning the transformed label's executed slice (current step on).
        policy = block_frame_policy(
            lambda obs, b=block: {"action": b["action"][None, 1:9]}, relative
        )
        obs = {k: world[k][None] for k in KEYS}
        torch.testing.assert_close(
            policy(obs)["action"][0], world["action"][1:9], rtol=0, atol=1e-3
        )
    stats = frame.stats()
    assert set(stats) == {*KEYS, "action"}
    assert all(stats[k]["min"].shape == stats[k]["max"].shape for k in stats)


def test_unknown_frame_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"task\.frame='polar'"):
        check_frame("polar")
