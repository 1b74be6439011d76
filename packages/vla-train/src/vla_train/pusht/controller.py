"""An analytic push controller for PushT: the next target is a closed-form function of the state.

The sampling planner (`vla_train.pusht.expert`) chooses among simulated pushes by an argmax
whose winner flips between nearly tied candidates, and a plan made a few steps ago continues
differently from a fresh one; both make its labels a noisy function of the observation. This
controller needs no rollouts. gym-pusht's T is quasi-static (its velocity is zeroed every
substep) and its contacts are frictionless, so a push at body-frame point c along the inward
edge normal n moves the T with the twist (n, k / I), k = (c - cog) x n, per unit of normal
push (mass 1, I = 3000: gym-pusht `add_tee`). With the desired twist ξ = (d, w) towards the
goal -- the negative gradient of the mean squared corner error, which fades as |Δθ| nears π
instead of flipping sign -- the cosine between the two in the metric diag(1, 1, I) is

    (n·d + k w) / (sqrt(1 + k² / I) · |ξ|),

maximised along an edge at k* = I w / (n·d), clipped to the edge: the contact point moves
continuously with the error. The controller scores each of the T's eight edges by that
cosine, plus a bonus for the edge the agent already touches (hysteresis visible in the
observation) and minus a cost per pixel of travel to the others; it then pushes (sliding along
the frictionless edge towards the best contact point, pushing by a step proportional to the
remaining error along that push) or travels to the pre-contact point around the T.

Each call depends only on (agent position, agent velocity, T pose): labels are time-consistent
(the continuation of an episode from any of its states is what a fresh call does), and a call
costs well under a millisecond, so every state a learner visits can be labelled.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import numpy as np

from vla_train.pusht.expert import (
    PD_LEAD_S,
    T_KEYPOINTS,
    ExpertConfig,
    PushTExpert,
    approach_path,
    rotation,
)
from vla_train.pusht.sim import AGENT_RADIUS, ARENA_HIGH, ARENA_LOW, GOAL_POSE, PushTSim, SimState

T_MASS, T_INERTIA = 1.0, 3000.0  # gym-pusht `add_tee`: mass 1, inertia of the bar polygon, twice
T_COG = np.array([0.0, 45.0])  # body-frame centre of gravity (mean of the two boxes' centroids)
# The usable part of each edge: start point, unit direction, inward normal, and the range of
# arc length s whose contact the agent (radius 15) can reach -- away from convex corners by the
# margin, and away from the two concave corners by the agent's radius.
_EDGES = (
    ((-60.0, 0.0), (1.0, 0.0), (0.0, 1.0), 0.0, 120.0),  # bar bottom: push +y
    ((60.0, 0.0), (0.0, 1.0), (-1.0, 0.0), 0.0, 30.0),  # bar right end: push -x
    ((60.0, 30.0), (-1.0, 0.0), (0.0, -1.0), 0.0, 30.0 - 2.0),  # bar top, right: push -y
    ((15.0, 30.0), (0.0, 1.0), (-1.0, 0.0), 15.0 + 2.0, 90.0),  # stem right side: push -x
    ((15.0, 120.0), (-1.0, 0.0), (0.0, -1.0), 0.0, 30.0),  # stem top: push -y
    ((-15.0, 120.0), (0.0, -1.0), (1.0, 0.0), 0.0, 75.0 - 2.0),  # stem left side: push +x
    ((-15.0, 30.0), (-1.0, 0.0), (0.0, -1.0), 15.0 + 2.0, 45.0),  # bar top, left: push -y
    ((-60.0, 30.0), (0.0, -1.0), (1.0, 0.0), 0.0, 30.0),  # bar left end: push +x
)


# An edge as the controller uses it: start point, direction, inward normal, the reachable range of
# arc length (lo, hi) and the lever arms k at its ends.
_Edge = tuple[np.ndarray, np.ndarray, np.ndarray, float, float, float, float]


@dataclass(frozen=True)
class ControllerConfig:
    """Knobs of the controller (lengths in pixels, steps per 10 Hz control step)."""

    contact_margin: float = 3.0  # contacts stay this far from an edge's reachable ends
    contact_gap: float = 5.0  # agent surface to edge at the pre-contact point
    push_gain: float = 0.5  # push step = gain x the push that would remove the error
    min_push_step: float = 1.0
    max_push_step: float = (
        6.0  # faster pushes overshoot: 93 % success at 10, 100 % at 6 (seeds 0-99)
    )
    slide_step: float = 3.0  # lateral correction along the edge per step
    approach_speed: float = 20.0
    stick: float = 0.15  # cosine bonus of the edge the agent touches
    travel_cost: float = 0.002  # cosine per pixel of travel to another edge
    region_tolerance: float = 4.0  # how far off an edge's pre-contact band still counts as on it
    push_depth: float = 12.0  # how far the agent centre may sink below contact height mid-push

    def __post_init__(self) -> None:
        for name in ("contact_gap", "min_push_step", "approach_speed", "slide_step"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ControllerConfig.{name}={getattr(self, name)}: must be > 0")
        if self.max_push_step < self.min_push_step:
            raise ValueError(
                f"ControllerConfig.max_push_step={self.max_push_step} < "
                f"min_push_step={self.min_push_step}"
            )
        for name in ("contact_margin", "push_gain", "stick", "travel_cost", "region_tolerance"):
            if getattr(self, name) < 0:
                raise ValueError(f"ControllerConfig.{name}={getattr(self, name)}: must be >= 0")


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def desired_twist(pose: np.ndarray) -> tuple[np.ndarray, float]:
    """Body-frame (d [2], w) that lowers the mean squared corner error to the goal fastest: the
    mean corner displacement and the corners' mean moment about the cog over their inertia."""
    rot = rotation(float(pose[2]))
    goal_origin = rot.T @ (GOAL_POSE[:2] - pose[:2])
    goal_corners = T_KEYPOINTS @ rotation(_wrap(GOAL_POSE[2] - pose[2])).T + goal_origin
    delta = goal_corners - T_KEYPOINTS
    arm = T_KEYPOINTS - T_COG
    moment = arm[:, 0] * delta[:, 1] - arm[:, 1] * delta[:, 0]
    return delta.mean(0), float(moment.mean() / (arm**2).sum(1).mean())


class PushController:
    """`act(state)` -> the next agent target (world, float32 [2]); see the module docstring.
    `next_targets` and `chunk_with_states` give it the interface of `PushTExpert`."""

    replan_every = 1  # every control step is a decision

    def __init__(self, config: ControllerConfig | None = None) -> None:
        self.config = config or ControllerConfig()
        c = self.config
        self._edges: list[_Edge] = []
        for start, direction, normal, s0, s1 in _EDGES:
            a, u, n = np.array(start), np.array(direction), np.array(normal)
            lo, hi = s0 + c.contact_margin, s1 - c.contact_margin
            arm0 = a + lo * u - T_COG
            arm1 = a + hi * u - T_COG
            k0 = arm0[0] * n[1] - arm0[1] * n[0]
            k1 = arm1[0] * n[1] - arm1[1] * n[0]
            self._edges.append((a, u, n, lo, hi, k0, k1))
        # The planner's collision-free approach path, with this controller's contact gap.
        self._path_config = ExpertConfig(contact_gap=c.contact_gap)
        self.sim = PushTSim()
        self.planning_seconds = 0.0
        self.planning_cpu_seconds = 0.0

    def _best_contact(self, edge: int, d: np.ndarray, w: float) -> tuple[float, float, float]:
        """(score, arc length s, push length) of the best contact on `edge`; score / |ξ| is the
        cosine between its twist and the desired one."""
        _, _, n, lo, hi, k0, k1 = self._edges[edge]
        along = float(n @ d)
        candidates = [lo, hi]
        if along > 1e-9 and abs(k1 - k0) > 1e-9:
            s = lo + (T_INERTIA * w / along - k0) / (k1 - k0) * (hi - lo)
            candidates.append(min(max(s, lo), hi))
        best = (-math.inf, lo, 0.0)
        for s in candidates:
            k = k0 + (k1 - k0) * (s - lo) / (hi - lo)
            gain = along + k * w  # the push length that removes the error along this twist
            score = gain / math.sqrt(1.0 + k * k / T_INERTIA)
            if score > best[0]:
                best = (score, s, gain)
        return best

    def act(self, state: SimState) -> np.ndarray:
        t0, c0 = time.perf_counter(), time.process_time()
        target = self._act(state)
        self.planning_seconds += time.perf_counter() - t0
        self.planning_cpu_seconds += time.process_time() - c0
        return target

    def _act(self, state: SimState) -> np.ndarray:
        c = self.config
        pose = state.block_pose
        rot = rotation(float(pose[2]))
        agent = np.asarray(state.agent_pos) + PD_LEAD_S * np.asarray(state.agent_vel)
        lead = np.clip(agent, ARENA_LOW, ARENA_HIGH)
        lead_body = rot.T @ (lead - pose[:2])
        d, w = desired_twist(pose)
        norm = max(math.sqrt(float(d @ d) + T_INERTIA * w * w), 1e-9)
        on_edge = []
        for a, u, n, lo, hi, _, _ in self._edges:
            rel = lead_body - a
            height, lateral = -float(rel @ n), float(rel @ u)
            on_edge.append(
                AGENT_RADIUS - c.push_depth
                <= height
                <= AGENT_RADIUS + c.contact_gap + c.region_tolerance
                and lo - c.region_tolerance <= lateral <= hi + c.region_tolerance
            )
        best: tuple[float, int, float, float, np.ndarray] | None = None
        for edge, (a, u, n, *_rest) in enumerate(self._edges):
            score, s, gain = self._best_contact(edge, d, w)
            pre_body = a + s * u - n * (AGENT_RADIUS + c.contact_gap)
            pre = rot @ pre_body + pose[:2]
            if not (ARENA_LOW <= pre[0] <= ARENA_HIGH and ARENA_LOW <= pre[1] <= ARENA_HIGH):
                continue
            value = score / norm
            if on_edge[edge] and score > 0:
                value += c.stick
            else:
                value -= c.travel_cost * float(np.linalg.norm(pre_body - lead_body))
            if best is None or value > best[0]:
                best = (value, edge, s, gain, pre)
        if best is None:  # every pre-contact point is beyond a wall: head for the centre
            return _step_along([lead, np.array([256.0, 256.0])], c.approach_speed)
        _, edge, s, gain, pre = best
        a, u, n, *_ = self._edges[edge]
        if on_edge[edge]:
            # Relative to the agent, not its lead: the PD law then damps any sideways velocity,
            # and the agent settles at `push` pixels per step along the normal.
            agent_body = rot.T @ (np.asarray(state.agent_pos) - pose[:2])
            lateral = float(np.clip(s - float((agent_body - a) @ u), -c.slide_step, c.slide_step))
            push = float(np.clip(c.push_gain * gain, c.min_push_step, c.max_push_step))
            offset = u * lateral + n * push * PD_LEAD_S * 10.0  # 10 control steps per second
            return (rot @ (agent_body + offset) + pose[:2]).astype(np.float32)
        path = approach_path(lead, pre, pose, self._path_config)
        return _step_along([lead, *(path or [pre])], c.approach_speed)

    # --------------------------------------------------------------- the expert interface
    def next_targets(self, state: SimState) -> np.ndarray:
        """The targets to execute before asking again: one, [1, 2]."""
        return self.act(state)[None]

    def chunk_with_states(
        self, state: SimState, horizon: int, *, plan_once: bool = False
    ) -> tuple[np.ndarray, list[SimState], np.ndarray]:
        """The next `horizon` targets from `state` [horizon, 2], the state before each, and
        where the expert decided afresh (everywhere). `plan_once` changes nothing: the
        controller's continuation from any state is what a fresh call does."""
        del plan_once
        targets, states = [], [state]
        self.sim.load(state)
        for _ in range(horizon):
            target = self.act(states[-1])
            self.sim.step(target)
            targets.append(target)
            states.append(self.sim.save())
        return np.asarray(targets, np.float32), states[:horizon], np.ones(horizon, dtype=bool)


def _step_along(points: list[np.ndarray], vmax: float) -> np.ndarray:
    """The point up to `vmax` along the polyline `points` from its start, braking to half the
    remaining length near the end so the PD agent arrives without overshoot."""
    lengths = [float(np.linalg.norm(b - a)) for a, b in itertools.pairwise(points)]
    remaining = sum(lengths)
    step = remaining if remaining <= 2.0 else min(vmax, max(2.0, 0.5 * remaining))
    pos = points[0].astype(float)
    for b, length in zip(points[1:], lengths, strict=True):
        if length >= step:
            return (pos + (b - pos) * (step / max(length, 1e-9))).astype(np.float32)
        step -= length
        pos = b.astype(float)
    return pos.astype(np.float32)


EXPERTS = ("planner", "controller")


def make_expert(
    kind: str, planner_config: ExpertConfig | None = None
) -> PushTExpert | PushController:
    """The labeller named by `task.expert`: the sampling planner (with `planner_config`) or this
    controller."""
    if kind == "planner":
        return PushTExpert(planner_config)
    if kind == "controller" and planner_config is None:
        return PushController()
    if kind == "controller":
        raise ValueError("an ExpertConfig configures the planner, not task.expert='controller'")
    raise ValueError(f"task.expert={kind!r}: expected one of {EXPERTS}")
