"""Closed-loop PushT evaluation in gym-pusht, diffusion_policy's protocol.

Each episode is reset with its own seed (`start_seed + i`), the policy sees the last
`n_obs_steps` observations (the first one repeated at reset, as DP's MultiStepWrapper does),
predicts a chunk and the first `n_action_steps` actions are executed open-loop. An episode ends on
success (coverage > 0.95, gym-pusht's `terminated`) or after `max_steps` env steps. Episodes run
in lock-step groups of `n_envs` so one batched policy call serves a whole group.

Metrics: success rate, mean over episodes of the max coverage, and DP's `mean_score` (mean of
the max reward `clip(coverage / 0.95, 0, 1)`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_train.atomic import write_gif

SUCCESS_COVERAGE = 0.95
OBS_TYPES = ("environment_state_agent_pos", "pixels_agent_pos")


def env_obs_to_frame(obs: dict[str, np.ndarray], obs_type: str) -> dict[str, np.ndarray]:
    """One gym-pusht observation -> the dataset's per-frame keys (as the PushT recorder stores
    them): agent_pos -> observation.state (2,), keypoints -> observation.environment_state (16,),
    pixels HWC uint8 -> observation.image CHW float32 in [0, 1]."""
    if obs_type not in OBS_TYPES:
        raise ValueError(f"env obs_type must be one of {OBS_TYPES}, got {obs_type!r}")
    frame = {"observation.state": np.asarray(obs["agent_pos"], dtype=np.float32)}
    if obs_type == "environment_state_agent_pos":
        frame["observation.environment_state"] = np.asarray(
            obs["environment_state"], dtype=np.float32
        )
    else:
        pixels = np.asarray(obs["pixels"])
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"pixels must be [H, W, 3], got {pixels.shape}")
        frame["observation.image"] = pixels.transpose(2, 0, 1).astype(np.float32) / 255.0
    return frame


@dataclass
class EvalResult:
    success_rate: float
    mean_max_coverage: float
    mean_score: float
    n_episodes: int
    seeds: list[int]
    max_coverage: list[float]
    success: list[bool]
    episode_steps: list[int]
    policy_calls: int
    policy_time_s: float
    wall_s: float
    videos: list[str] = field(default_factory=list)

    @property
    def ms_per_policy_call(self) -> float:
        return 1000.0 * self.policy_time_s / max(1, self.policy_calls)

    def summary(self) -> dict[str, float]:
        return {
            "eval/success_rate": self.success_rate,
            "eval/mean_max_coverage": self.mean_max_coverage,
            "eval/mean_score": self.mean_score,
        }

    def first(self, n: int) -> dict[str, Any]:
        """Success and coverage of the first `n` episodes (e.g. diffusion_policy's 50 standard
        seeds 100000..100049 inside a 200-seed evaluation), with 95 % intervals."""
        if not 1 <= n <= self.n_episodes:
            raise ValueError(f"n={n}: expected 1..{self.n_episodes}")
        success, coverage = self.success[:n], np.asarray(self.max_coverage[:n])
        half = 1.96 * float(coverage.std(ddof=1)) / np.sqrt(n) if n > 1 else float("nan")
        return {
            "n_episodes": n,
            "seeds": [self.seeds[0], self.seeds[n - 1]],
            "success_rate": float(np.mean(success)),
            "success_ci95": list(wilson_interval(sum(success), n)),
            "mean_max_coverage": float(coverage.mean()),
            "coverage_ci95": [float(coverage.mean()) - half, float(coverage.mean()) + half],
        }

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ms_per_policy_call"] = self.ms_per_policy_call
        out["success_ci95"] = list(wilson_interval(sum(self.success), self.n_episodes))
        return out


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a success rate (Wilson 1927): unlike the normal approximation
    it stays inside [0, 1] and is sensible at 0 or n successes."""
    if n < 1:
        raise ValueError(f"n={n}: expected >= 1")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def make_env(obs_type: str, max_steps: int, render: bool = False) -> Any:
    import gym_pusht  # noqa: F401  (registers gym_pusht/PushT-v0)
    import gymnasium as gym

    return gym.make(
        "gym_pusht/PushT-v0",
        obs_type=obs_type,
        render_mode="rgb_array",
        max_episode_steps=max_steps,
    )


def stack_obs(
    histories: Sequence[Sequence[dict[str, np.ndarray]]], keys: Sequence[str], device: torch.device
) -> dict[str, torch.Tensor]:
    """Histories of frames -> {key: [B, n_obs_steps, ...]} tensors."""
    return {
        key: torch.from_numpy(np.stack([np.stack([f[key] for f in h]) for h in histories])).to(
            device
        )
        for key in keys
    }


@torch.no_grad()
def evaluate(
    predict_action: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    *,
    obs_type: str,
    obs_keys: Sequence[str],
    n_obs_steps: int,
    n_episodes: int,
    start_seed: int = 100000,
    max_steps: int = 300,
    n_envs: int = 10,
    device: torch.device | str = "cpu",
    video_dir: Path | None = None,
    n_videos: int = 0,
    video_size: int = 256,
) -> EvalResult:
    """Roll out `predict_action` (obs {key: [B, To, ...]} -> {"action": [B, Ta, Da]})."""
    if n_episodes < 1 or n_envs < 1 or max_steps < 1 or n_obs_steps < 1:
        raise ValueError(
            f"need n_episodes, n_envs, max_steps, n_obs_steps >= 1; got {n_episodes}, {n_envs}, "
            f"{max_steps}, {n_obs_steps}"
        )
    device = torch.device(device)
    t0 = time.perf_counter()
    n_envs = min(n_envs, n_episodes)
    envs = [make_env(obs_type, max_steps) for _ in range(n_envs)]
    seeds = [start_seed + i for i in range(n_episodes)]
    max_cov = [0.0] * n_episodes
    success = [False] * n_episodes
    steps = [0] * n_episodes
    videos: list[str] = []
    policy_calls, policy_time = 0, 0.0
    try:
        for first in range(0, n_episodes, n_envs):
            group = list(range(first, min(first + n_envs, n_episodes)))
            histories: list[deque[dict[str, np.ndarray]]] = []
            frames: dict[int, list[np.ndarray]] = {}
            for slot, ep in enumerate(group):
                obs, _ = envs[slot].reset(seed=seeds[ep])
                frame = env_obs_to_frame(obs, obs_type)
                missing = [k for k in obs_keys if k not in frame]
                if missing:
                    raise KeyError(
                        f"policy needs {missing}; env obs_type={obs_type} gives {list(frame)}"
                    )
                histories.append(deque([frame] * n_obs_steps, maxlen=n_obs_steps))
                if ep < n_videos and video_dir is not None:
                    frames[ep] = [envs[slot].render()]
            active = list(range(len(group)))
            while active:
                obs_batch = stack_obs([histories[s] for s in active], obs_keys, device)
                tic = time.perf_counter()
                actions = predict_action(obs_batch)["action"]  # [b, Ta, Da]
                actions_np = actions.float().cpu().numpy()
                policy_time += time.perf_counter() - tic
                policy_calls += 1
                still_active = []
                for row, slot in enumerate(active):
                    ep = group[slot]
                    done = False
                    for action in actions_np[row]:
                        obs, _, terminated, truncated, info = envs[slot].step(action)
                        steps[ep] += 1
                        histories[slot].append(env_obs_to_frame(obs, obs_type))
                        max_cov[ep] = max(max_cov[ep], float(info["coverage"]))
                        if ep in frames:
                            frames[ep].append(envs[slot].render())
                        if terminated:
                            success[ep] = True
                        if terminated or truncated or steps[ep] >= max_steps:
                            done = True
                            break
                    if not done:
                        still_active.append(slot)
                active = still_active
            for ep, ep_frames in frames.items():
                assert video_dir is not None
                path = video_dir / f"episode_{seeds[ep]}.gif"
                write_gif(ep_frames, path, size=video_size)
                videos.append(str(path))
    finally:
        for env in envs:
            env.close()
    scores = [min(1.0, c / SUCCESS_COVERAGE) for c in max_cov]
    return EvalResult(
        success_rate=float(np.mean(success)),
        mean_max_coverage=float(np.mean(max_cov)),
        mean_score=float(np.mean(scores)),
        n_episodes=n_episodes,
        seeds=seeds,
        max_coverage=max_cov,
        success=success,
        episode_steps=steps,
        policy_calls=policy_calls,
        policy_time_s=policy_time,
        wall_s=time.perf_counter() - t0,
        videos=videos,
    )


@torch.no_grad()
def action_latency_ms(
    predict_action: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    obs: dict[str, torch.Tensor],
    *,
    repeats: int = 20,
    warmup: int = 3,
) -> float:
    """Median wall time of one `predict_action` call on `obs` (batch as given), milliseconds."""
    times = []
    for i in range(warmup + repeats):
        if any(v.is_cuda for v in obs.values()):
            torch.cuda.synchronize()
        tic = time.perf_counter()
        predict_action(obs)
        if any(v.is_cuda for v in obs.values()):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - tic)
    return 1000.0 * float(np.median(times))


def first_observation(
    obs_type: str, obs_keys: Sequence[str], n_obs_steps: int, seed: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """A real batch-1 observation window (reset of seed `seed`), for latency measurements."""
    env = make_env(obs_type, 10)
    try:
        obs, _ = env.reset(seed=seed)
    finally:
        env.close()
    frame = env_obs_to_frame(obs, obs_type)
    return stack_obs([deque([frame] * n_obs_steps)], obs_keys, device)
