"""PushT observations and actions in the T's own frame (SE(2) canonicalisation).

Pushing a T is the same problem wherever the T lies and however it is turned: in the T's body
frame the contact points, push directions and approach paths are fixed, and only the agent's
position and the goal's pose relative to the T vary. Expressing the low-dim observation and the
action chunk in that frame removes the three symmetric degrees of freedom a policy would otherwise
have to learn from data (the idea behind SE(2)-equivariant manipulation policies, e.g. Wang et
al., "Equivariant Diffusion Policy", CoRL 2024 — here as a fixed input/output transform).

The transform is a deterministic function of gym-pusht's own observation (agent position and the
T's 8 keypoints) and the fixed goal, so the policy still sees nothing the environment does not
report. Per observation step i, with block pose (p_i, R_i) read from the keypoints:
  observation.state              -> R_i^T (agent_i - p_i)                       [2]
  observation.environment_state  -> R_i^T (goal keypoints - p_i)                [16]
and the action chunk is expressed in the frame of the latest observation step:
  action -> R_t^T (target - p_t); executed as R_t a + p_t.
`block_relative` further writes action k of the chunk relative to the agent's current position
(block frame) divided by its distance in steps from the current step, |k - (To - 1)| + 1: the mean
velocity to reach it. A policy's min-max action normaliser then spans tens of pixels per step
instead of the arena, so the executed first actions get several times finer resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vla_train.pusht.expert import T_KEYPOINTS, to_world
from vla_train.pusht.sim import GOAL_POSE

FRAMES = ("world", "block", "block_relative")
STATE, ENV = "observation.state", "observation.environment_state"
_GOAL_KEYPOINTS = torch.as_tensor(to_world(GOAL_POSE, T_KEYPOINTS), dtype=torch.float32)  # [8, 2]


def block_pose(keypoints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., 16] gym-pusht keypoints -> origin [..., 2] and rotation [..., 2, 2] of the T.
    Keypoints 0 and 1 are the bar's bottom corners (-60, 0) and (60, 0): their midpoint is the
    body origin and their direction the body x axis."""
    k = keypoints.reshape(*keypoints.shape[:-1], 8, 2)
    origin = 0.5 * (k[..., 0, :] + k[..., 1, :])
    x_axis = k[..., 1, :] - k[..., 0, :]
    x_axis = x_axis / x_axis.norm(dim=-1, keepdim=True)
    c, s = x_axis[..., 0], x_axis[..., 1]
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    return origin, rot


def _to_body(points: torch.Tensor, origin: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """World points [..., N, 2] -> body frame given origin [..., 2], rotation [..., 2, 2]."""
    return (points - origin.unsqueeze(-2)) @ rot


def _to_world(points: torch.Tensor, origin: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    return points @ rot.transpose(-1, -2) + origin.unsqueeze(-2)


def canonical_obs(obs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{state [..., To, 2], environment_state [..., To, 16]} in each step's block frame."""
    keypoints = obs[ENV].float()
    origin, rot = block_pose(keypoints)
    agent = _to_body(obs[STATE].float().unsqueeze(-2), origin, rot).squeeze(-2)
    goal = _GOAL_KEYPOINTS.to(keypoints.device).expand(*keypoints.shape[:-1], 8, 2)
    out = dict(obs)
    out[STATE] = agent
    out[ENV] = _to_body(goal, origin, rot).reshape(keypoints.shape)
    return out


def latest_pose(obs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The block pose of the latest observation step: origin [..., 2], rotation [..., 2, 2]."""
    return block_pose(obs[ENV][..., -1, :].float())


def step_divisors(horizon: int, current: int) -> torch.Tensor:
    """[horizon, 1] divisors |k - current| + 1 of the relative action parameterisation."""
    return ((torch.arange(horizon) - current).abs() + 1).float().unsqueeze(-1)


class BlockFrameDataset(Dataset[dict[str, torch.Tensor]]):
    """Wraps a window dataset: observations and the action chunk in the block frame (actions
    relative to the current agent position per step when `relative`)."""

    def __init__(self, windows: Any, relative: bool = False) -> None:
        self.windows = windows
        self.relative = relative

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = self.windows[i]
        origin, rot = latest_pose(sample)
        out = canonical_obs(sample)
        action = _to_body(sample["action"], origin, rot)
        if self.relative:
            current = out[STATE].shape[-2] - 1
            action = (action - out[STATE][current]) / step_divisors(len(action), current)
        out["action"] = action
        return out

    def stats(self) -> dict[str, dict[str, torch.Tensor]]:
        """min / max / mean / std of every transformed low-dim key and the action, over all
        windows (the raw dataset's stats do not apply after the transform)."""
        columns: dict[str, list[torch.Tensor]] = {}
        for i in range(len(self)):
            for key, value in self[i].items():
                if key != "action_is_pad":
                    columns.setdefault(key, []).append(value.reshape(-1, value.shape[-1]))
        out = {}
        for key, parts in columns.items():
            x = torch.cat(parts)
            out[key] = {"min": x.amin(0), "max": x.amax(0), "mean": x.mean(0), "std": x.std(0)}
        return out


def block_frame_policy(
    predict_action: Callable[..., dict[str, torch.Tensor]], relative: bool = False
) -> Callable[..., dict[str, torch.Tensor]]:
    """A world-frame `predict_action` around one trained in the block frame. The policy returns
    the executed slice of its chunk, which starts at the current step."""

    def predict(obs: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        origin, rot = latest_pose(obs)
        canonical = canonical_obs(obs)
        out = dict(predict_action(canonical, **kwargs))
        action = out["action"].float()  # [B, Ta, 2]
        if relative:
            steps = step_divisors(action.shape[-2], 0).to(action.device)
            action = canonical[STATE][..., -1:, :] + action * steps
        out["action"] = _to_world(action, origin, rot).to(out["action"].dtype)
        return out

    return predict


def check_frame(frame: str) -> str:
    if frame not in FRAMES:
        raise ValueError(f"task.frame={frame!r}: expected one of {FRAMES}")
    return frame


def world_to_block_numpy(points: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """Numpy convenience for analysis scripts: world points [N, 2] in the frame of `keypoints`."""
    origin, rot = block_pose(torch.as_tensor(keypoints, dtype=torch.float32))
    return _to_body(torch.as_tensor(points, dtype=torch.float32), origin, rot).numpy()
