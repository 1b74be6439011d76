"""Run the scripted expert for one seeded gym-pusht episode and record LeRobot-style frames."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vla_train.pusht.controller import make_expert
from vla_train.pusht.expert import ExpertConfig
from vla_train.pusht.sim import snapshot

MAX_STEPS = 300  # gym-pusht's registered episode limit, and diffusion_policy's eval horizon
FPS = 10
TASK = "Push the T-shaped block onto the T-shaped target."


def make_env(max_steps: int = MAX_STEPS, **kwargs: Any) -> Any:
    """gym-pusht with block keypoints + agent position observations; images via the renderer."""
    import gym_pusht  # noqa: F401  (registers gym_pusht/PushT-v0)
    import gymnasium as gym

    return gym.make(
        "gym_pusht/PushT-v0",
        obs_type="environment_state_agent_pos",
        max_episode_steps=max_steps,
        disable_env_checker=True,  # its warnings flag T corners outside [0, 512], which is legal
        **kwargs,
    )


@dataclass
class Episode:
    """One expert rollout. `frames` holds per-step columns: the observation before the action,
    the action, and the env's reward/success/done after it."""

    seed: int
    success: bool
    max_coverage: float
    planning_seconds: float
    planning_cpu_seconds: float
    frames: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.frames["action"])


def run_expert_episode(
    seed: int,
    image: bool = True,
    config: ExpertConfig | None = None,
    max_steps: int = MAX_STEPS,
    on_step: Callable[[Any], None] | None = None,
    env_kwargs: dict[str, Any] | None = None,
    action_noise: float = 0.0,
    expert: str = "planner",
) -> Episode:
    """Reset gym-pusht with `seed`, act with the expert until success or `max_steps`.

    `action_noise` > 0 executes each target plus Gaussian noise of that std (pixels) while the
    recorded action stays the expert's clean target (DART-style noise injection): the demos then
    visit states slightly off the expert's path and label them with the way back, which is what
    a cloned policy needs once its own errors push it there. The noise is seeded by `seed`.

    `on_step(env)` is called after the reset and after every step (e.g. to render a picture);
    `env_kwargs` go to `gym.make` (e.g. `visualization_width`). `expert`: "planner" (the
    sampling planner, `config` its knobs) or "controller" (`vla_train.pusht.controller`).
    """
    if action_noise < 0:
        raise ValueError(f"action_noise={action_noise}: expected >= 0")
    env = make_env(max_steps=max_steps, **(env_kwargs or {}))
    actor = make_expert(expert, config)
    noise_rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    if on_step is not None:
        on_step(env)
    columns: dict[str, list[Any]] = {
        k: []
        for k in (
            "observation.state",
            "observation.environment_state",
            *(("observation.image",) if image else ()),
            "action",
            "expert.replanned",
            "next.reward",
            "next.success",
            "next.done",
        )
    }
    max_coverage, success, done, steps = 0.0, False, False, 0
    while not done:
        for k, action in enumerate(actor.next_targets(snapshot(env))):
            columns["observation.state"].append(np.asarray(obs["agent_pos"], np.float32))
            columns["observation.environment_state"].append(
                np.asarray(obs["environment_state"], np.float32)
            )
            if image:
                columns["observation.image"].append(env.unwrapped._render())  # [96, 96, 3]
            executed = action
            if action_noise > 0:
                executed = action + noise_rng.normal(0.0, action_noise, 2).astype(np.float32)
            obs, reward, terminated, truncated, info = env.step(executed)
            steps += 1
            if on_step is not None:
                on_step(env)
            success = bool(info["is_success"])
            done = bool(terminated or truncated) or steps >= max_steps
            max_coverage = max(max_coverage, float(info["coverage"]))
            columns["action"].append(np.asarray(action, np.float32))
            columns["expert.replanned"].append(np.bool_(k == 0))
            columns["next.reward"].append(np.float32(reward))
            columns["next.success"].append(np.bool_(success))
            columns["next.done"].append(np.bool_(done))
            if done:
                break
    env.close()
    frames = {k: np.stack(v) for k, v in columns.items()}
    return Episode(
        seed, success, max_coverage, actor.planning_seconds, actor.planning_cpu_seconds, frames
    )
