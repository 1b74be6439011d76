"""A clonable copy of gym-pusht's physics, for planning by rollout.

`copy.deepcopy` of the env fails (pymunk/cffi objects), so we keep a second `PushTEnv` whose
pymunk space is built by the env's own `_setup()`, copy the bodies' full kinematic state into it,
and step it with the same PD law and substeps as `PushTEnv.step` (gym-pusht 0.1.8
`gym_pusht/envs/pusht.py`) minus the observation/coverage work. Loading the state of a
non-contacting env reproduces its future exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

from gym_pusht.envs.pusht import PushTEnv

GOAL_POSE = np.array([256.0, 256.0, np.pi / 4])  # gym-pusht's fixed goal (x, y, angle)
AGENT_RADIUS = 15.0
ARENA_LOW, ARENA_HIGH = 5.0 + 2.0 + AGENT_RADIUS, 506.0 - 2.0 - AGENT_RADIUS  # agent centre range


def _ignore_contacts(arbiter: Any, space: Any, data: Any) -> None:
    del arbiter, space, data


@dataclass(frozen=True)
class SimState:
    """Everything that determines PushT's future given the actions."""

    agent_pos: tuple[float, float]
    agent_vel: tuple[float, float]
    block_pos: tuple[float, float]  # body origin (the T's top-bar centre), as env.block.position
    block_angle: float
    block_vel: tuple[float, float]
    block_angular_vel: float

    @property
    def block_pose(self) -> np.ndarray:
        return np.array([self.block_pos[0], self.block_pos[1], self.block_angle])


def snapshot(env: Any) -> SimState:
    """Read the state of a gym-pusht env (wrapped or not)."""
    u = env.unwrapped
    return SimState(
        agent_pos=tuple(u.agent.position),
        agent_vel=tuple(u.agent.velocity),
        block_pos=tuple(u.block.position),
        block_angle=float(u.block.angle),
        block_vel=tuple(u.block.velocity),
        block_angular_vel=float(u.block.angular_velocity),
    )


class PushTSim:
    """`load(state)`, then `step(target)` like `env.step` (10 substeps of 10 ms, PD control)."""

    def __init__(self) -> None:
        self._env = PushTEnv(obs_type="state")
        self._env._setup()
        # The env counts contact points in a post-solve callback (for `info["n_contacts"]`); the
        # planner never reads it, and building each contact set costs ~15 % of a rollout.
        self._env.collision_handeler.post_solve = _ignore_contacts
        self.agent = self._env.agent
        self.block = self._env.block
        self.space = self._env.space
        self._k_p, self._k_v, self._dt = self._env.k_p, self._env.k_v, self._env.dt
        self._substeps = int(1 / (self._env.dt * self._env.control_hz))

    def load(self, state: SimState) -> None:
        self.agent.position = state.agent_pos
        self.agent.velocity = state.agent_vel
        # Angle first: pymunk rotates about the centre of gravity, so setting the angle after the
        # position would move the body origin.
        self.block.angle = state.block_angle
        self.block.position = state.block_pos
        self.block.velocity = state.block_vel
        self.block.angular_velocity = state.block_angular_vel

    def save(self) -> SimState:
        return SimState(
            agent_pos=tuple(self.agent.position),
            agent_vel=tuple(self.agent.velocity),
            block_pos=tuple(self.block.position),
            block_angle=float(self.block.angle),
            block_vel=tuple(self.block.velocity),
            block_angular_vel=float(self.block.angular_velocity),
        )

    def step(self, target: np.ndarray) -> None:
        """One 10 Hz control step towards `target` (float32 [2], as the env receives it)."""
        # PushTEnv.step's PD law, written on Python floats: the same float64 operations in the
        # same order, so the result matches the env bit for bit, without numpy/Vec2d overhead.
        tx, ty = float(target[0]), float(target[1])
        k_p, k_v, dt, agent, space = self._k_p, self._k_v, self._dt, self.agent, self.space
        for _ in range(self._substeps):
            px, py = agent.position
            vx, vy = agent.velocity
            agent.velocity = (
                vx + (k_p * (tx - px) + k_v * (0.0 - vx)) * dt,
                vy + (k_p * (ty - py) + k_v * (0.0 - vy)) * dt,
            )
            space.step(dt)

    def block_pose(self) -> np.ndarray:
        return np.array([*self.block.position, self.block.angle])

    def coverage(self) -> float:
        return float(self._env._get_coverage())
