"""A scripted PushT expert: greedy push primitives chosen by rollouts in a cloned simulator.

The T is quasi-static (gym-pusht zeroes its velocity every substep) and contacts are frictionless,
so a push moves it only while the agent presses on an edge, along that edge's normal. Each
decision samples primitives -- a contact point on the T outline, a push length along the inward
normal -- scores them by simulating the push alone, then simulates the best few *in full*
(collision-free approach around the T, push, short retreat) from the true state and executes the
one with the lowest SE(2) keypoint error plus a per-step cost. Every action moves the target by a
bounded step, so the demonstrations are smooth.
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass

import numpy as np
import shapely.geometry as sg

from vla_train.pusht.sim import AGENT_RADIUS, ARENA_HIGH, ARENA_LOW, GOAL_POSE, PushTSim, SimState

# The T outline in the block's body frame (gym-pusht `add_tee`, scale 30): bar x in [-60, 60],
# y in [0, 30]; stem x in [-15, 15], y in [30, 120]. Vertex i joins edge i-1 and edge i.
T_OUTLINE = np.array(
    [(-60, 0), (60, 0), (60, 30), (15, 30), (15, 120), (-15, 120), (-15, 30), (-60, 30)], float
)
EDGE_NORMALS = np.array([(0, -1), (1, 0), (0, 1), (1, 0), (0, 1), (-1, 0), (0, 1), (-1, 0)], float)
# The 8 corners in the order `PushTEnv.get_keypoints` returns them (pymunk stores each box's
# vertices counter-clockwise from its lowest-x, lowest-y corner): bar, then stem.
T_KEYPOINTS = np.array(
    [(-60, 0), (60, 0), (60, 30), (-60, 30), (-15, 30), (15, 30), (15, 120), (-15, 120)], float
)
SUCCESS_COVERAGE = 0.95  # gym-pusht's `success_threshold`
SUCCESS_CHECK_ERROR = 6.0  # px; coverage > 0.95 needs a pose error of a few pixels


def rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def to_world(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Body-frame points [N, 2] -> world [N, 2] for a block pose (x, y, angle)."""
    return points @ rotation(float(pose[2])).T + pose[:2]


def pose_error(pose: np.ndarray, goal: np.ndarray = GOAL_POSE) -> float:
    """RMS distance (px) between the T's 8 corners at `pose` and at `goal`: one number that
    weighs translation and rotation by the T's own size."""
    d = to_world(pose, T_KEYPOINTS) - to_world(goal, T_KEYPOINTS)
    return float(np.sqrt((d**2).sum(1).mean()))


def world_polygon(pose: np.ndarray) -> sg.Polygon:
    return sg.Polygon(to_world(pose, T_OUTLINE))


@dataclass(frozen=True)
class ExpertConfig:
    """Knobs of the planner (lengths in pixels, speeds in pixels per 10 Hz control step)."""

    contact_spacing: float = 12.0  # distance between sampled contact points along an edge
    contact_margin: float = 3.0  # keep contacts this far from edge ends
    contact_gap: float = 5.0  # agent surface to T edge before a push
    max_push: float = 80.0  # deepest push probed past first contact
    fine_error: float = 10.0  # below this pose error, probe short slow pushes instead
    fine_max_push: float = 20.0
    fine_push_speed: float = 3.0
    approach_speed: float = 30.0
    push_speed: float = 12.0
    min_step: float = 2.0  # smallest target move while decelerating
    settle_steps: int = 2  # hold the push end so the lagging PD agent gets there
    retreat: float = 8.0  # back off after a push so the next decision starts contact-free
    path_clearance: float = 10.0  # approach waypoints stay this far beyond the agent radius
    top_k: int = 6  # primitives simulated in full (approach + push + retreat)
    step_cost: float = 0.15  # pose error (px) a primitive must save per control step it spends
    switch_margin: float = 2.0  # px a new primitive must beat pushing on along the current line
    line_tolerance: float = 5.0  # px off a push line that still counts as being on it
    replan_every: int = 8  # control steps executed between plans (= the policy's n_action_steps)

    def __post_init__(self) -> None:
        for name in (
            "contact_spacing",
            "contact_gap",
            "max_push",
            "approach_speed",
            "push_speed",
            "min_step",
            "fine_max_push",
            "fine_push_speed",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"ExpertConfig.{name}={getattr(self, name)}: must be > 0")
        if self.top_k < 1 or self.replan_every < 1:
            raise ValueError(
                f"ExpertConfig: top_k={self.top_k}, replan_every={self.replan_every}: expected >= 1"
            )
        for name in ("settle_steps", "retreat", "step_cost", "switch_margin", "line_tolerance"):
            if getattr(self, name) < 0:
                raise ValueError(f"ExpertConfig.{name}={getattr(self, name)}: must be >= 0")


def _contacts(config: ExpertConfig) -> tuple[np.ndarray, np.ndarray]:
    """Body-frame contact points [C, 2] and their outward normals [C, 2]."""
    points, normals = [], []
    for i in range(len(T_OUTLINE)):
        a, b = T_OUTLINE[i], T_OUTLINE[(i + 1) % len(T_OUTLINE)]
        length = float(np.linalg.norm(b - a))
        usable = length - 2 * config.contact_margin
        n = max(1, int(np.ceil(usable / config.contact_spacing)))
        for u in (np.arange(n) + 0.5) / n:
            points.append(a + (b - a) * (config.contact_margin + u * usable) / length)
            normals.append(EDGE_NORMALS[i])
    return np.array(points), np.array(normals)


def ramp(start: np.ndarray, end: np.ndarray, vmax: float, vmin: float) -> list[np.ndarray]:
    """Targets from `start` (exclusive) to `end` (inclusive): steps of at most `vmax`, shrinking
    to half the remaining distance near the end so the PD agent arrives without a jump."""
    targets, pos = [], start.astype(float)
    while True:
        remaining = float(np.linalg.norm(end - pos))
        if remaining <= vmin:
            targets.append(end.astype(float))
            return targets
        step = min(vmax, max(vmin, 0.5 * remaining))
        pos = pos + (end - pos) * (step / remaining)
        targets.append(pos)


def polyline_targets(points: list[np.ndarray], vmax: float, vmin: float) -> list[np.ndarray]:
    """Targets along a polyline at <= `vmax` per step, decelerating only at the final point."""
    total = sum(float(np.linalg.norm(b - a)) for a, b in itertools.pairwise(points))
    if total < 1e-9:
        return []
    targets, s = [], 0.0
    seg_lengths = [float(np.linalg.norm(b - a)) for a, b in itertools.pairwise(points)]
    while total - s > vmin:
        s += min(vmax, max(vmin, 0.5 * (total - s)))
        # locate arc length s on the polyline
        travelled, i = 0.0, 0
        while i < len(seg_lengths) - 1 and travelled + seg_lengths[i] < s:
            travelled += seg_lengths[i]
            i += 1
        u = 0.0 if seg_lengths[i] == 0 else min(1.0, (s - travelled) / seg_lengths[i])
        targets.append(points[i] + (points[i + 1] - points[i]) * u)
    targets.append(points[-1].astype(float))
    return targets


def _segment_clear(a: np.ndarray, b: np.ndarray, block: sg.Polygon, min_dist: float) -> bool:
    return bool(sg.LineString([a, b]).distance(block) >= min_dist)


def approach_path(
    start: np.ndarray, goal: np.ndarray, pose: np.ndarray, config: ExpertConfig
) -> list[np.ndarray] | None:
    """Shortest path start -> goal (agent centres) that keeps the agent off the T: Dijkstra on a
    visibility graph whose nodes are the T's corners pushed out by radius + clearance."""
    block = world_polygon(pose)
    inflate = AGENT_RADIUS + config.path_clearance
    corners = T_OUTLINE + inflate * (EDGE_NORMALS[np.arange(8) - 1] + EDGE_NORMALS)
    # Corners beyond a wall are pulled back inside; a segment they spoil fails the check below.
    waypoints = list(np.clip(to_world(pose, corners), ARENA_LOW, ARENA_HIGH))
    nodes = [start, *waypoints, goal]
    goal_id = len(nodes) - 1
    # A segment may come as close to the T as its endpoints already are (start may be touching).
    floor = AGENT_RADIUS + config.contact_gap - 0.5
    start_floor = min(floor, float(sg.Point(start).distance(block)) - 0.5)
    dist = {0: 0.0}
    prev: dict[int, int] = {}
    heap = [(0.0, 0)]
    done: set[int] = set()
    while heap:
        d, i = heapq.heappop(heap)
        if i in done:
            continue
        done.add(i)
        if i == goal_id:
            break
        for j in range(1, len(nodes)):
            if j in done:
                continue
            if not _segment_clear(nodes[i], nodes[j], block, start_floor if i == 0 else floor):
                continue
            nd = d + float(np.linalg.norm(nodes[j] - nodes[i]))
            if nd < dist.get(j, np.inf):
                dist[j], prev[j] = nd, i
                heapq.heappush(heap, (nd, j))
    if goal_id not in done:
        return None
    path, i = [goal], goal_id
    while prev.get(i, 0) != 0:
        i = prev[i]
        path.append(nodes[i])
    return path[::-1]


@dataclass(frozen=True)
class Primitive:
    """A planned action sequence and the simulator's prediction of where it leaves the T."""

    targets: np.ndarray  # [T, 2] float32 absolute agent targets, one per control step
    predicted: SimState
    error: float  # pose_error of the predicted final pose
    contact: int = -1  # index of the contact pushed (-1: none, e.g. stepping away)


# PD law of gym-pusht: acc = k_p (target - p) + k_v (0 - v), k_p = 100, k_v = 20. At constant
# velocity v the target leads the agent by (k_v / k_p) v, so a plan made mid-motion starts there.
PD_LEAD_S = 20.0 / 100.0


class PushTExpert:
    """A state-feedback expert: `plan(state)` is a deterministic function of the env state alone
    (no memory, no episode clock), so it can label any state, including those a learner drives
    into. Callers replan every few control steps (`ExpertConfig.replan_every`).

    Near-ties between contacts would make nearby states get different labels; the expert breaks
    them with hysteresis that is visible in the observation: a push along the line the agent is
    already on is kept unless another primitive is better by `switch_margin`.
    """

    def __init__(self, config: ExpertConfig | None = None) -> None:
        self.config = config or ExpertConfig()
        self.sim = PushTSim()
        self._contact_points, self._contact_normals = _contacts(self.config)
        self.planning_seconds = 0.0  # wall clock spent in plan()
        self.planning_cpu_seconds = 0.0  # process CPU time spent in plan() (robust to load)

    def _rollout(self, state: SimState, targets: list[np.ndarray]) -> tuple[np.ndarray, SimState]:
        self.sim.load(state)
        arr = np.asarray(targets, dtype=np.float32)
        for target in arr:
            self.sim.step(target)
        return arr, self.sim.save()

    def _rollout_until_success(
        self, state: SimState, targets: list[np.ndarray]
    ) -> tuple[np.ndarray, SimState, int | None]:
        """Like `_rollout`, also reporting the first step whose coverage passes the env's
        success threshold (checked only when the pose is close, coverage is costly)."""
        self.sim.load(state)
        arr = np.asarray(targets, dtype=np.float32)
        for i, target in enumerate(arr):
            self.sim.step(target)
            if (
                pose_error(self.sim.block_pose()) < SUCCESS_CHECK_ERROR
                and self.sim.coverage() > SUCCESS_COVERAGE
            ):
                return arr, self.sim.save(), i
        return arr, self.sim.save(), None

    def _push_targets(
        self, start: np.ndarray, pre: np.ndarray, normal: np.ndarray, length: float, speed: float
    ) -> list[np.ndarray]:
        """Push from `start` (on the push line) to `length` past first contact, hold, retreat."""
        c = self.config
        end = pre - normal * (c.contact_gap + length)
        out = ramp(start, end, speed, min(c.min_step, speed))
        out += [end] * c.settle_steps
        out += ramp(end, end + normal * (c.contact_gap + length + c.retreat), c.approach_speed, 4.0)
        return out

    def _probe(
        self, state: SimState, pre: np.ndarray, normal: np.ndarray, max_push: float, speed: float
    ) -> list[tuple[float, float]]:
        """Teleport the agent to `pre` and push along `-normal` at constant speed up to
        `max_push`; after each step, (pose error, push depth reached by the agent).
        One rollout scores every push length of a contact; the winners are re-simulated exactly."""
        c = self.config
        self.sim.load(SimState(tuple(pre), (0.0, 0.0), *_block_fields(state)))
        depth_max = c.contact_gap + max_push
        n_steps = int(np.ceil(depth_max / speed)) + c.settle_steps
        out = []
        for i in range(1, n_steps + 1):
            depth = min(i * speed, depth_max)
            self.sim.step((pre - normal * depth).astype(np.float32))
            reached = float(np.dot(pre - np.array(self.sim.agent.position), normal)) - c.contact_gap
            if reached > 0.5:
                out.append((pose_error(self.sim.block_pose()), reached))
        return out

    def _on_line(self, lead: np.ndarray, contacts: np.ndarray, normals: np.ndarray) -> int:
        """The contact whose push line the agent (its PD lead point) is on, or -1."""
        c = self.config
        rel = lead - contacts  # [C, 2]
        height = (rel * normals).sum(1)  # along the outward normal
        lateral = np.abs(rel[:, 0] * normals[:, 1] - rel[:, 1] * normals[:, 0])
        ok = (
            (lateral <= c.line_tolerance)
            & (height >= AGENT_RADIUS - c.max_push)
            & (height <= AGENT_RADIUS + c.contact_gap + c.retreat + c.line_tolerance)
        )
        if not ok.any():
            return -1
        return int(np.argmin(np.where(ok, lateral, np.inf)))  # lowest index wins exact ties

    def _candidate(
        self,
        k: int,
        length: float,
        lead: np.ndarray,
        current: int,
        contacts: np.ndarray,
        normals: np.ndarray,
        pose: np.ndarray,
    ) -> list[np.ndarray] | None:
        """Targets that push contact `k` by `length`: straight on when the agent is already on
        its push line, else after a collision-free approach. None when unreachable."""
        c = self.config
        speed = c.fine_push_speed if pose_error(pose) < c.fine_error else c.push_speed
        pre = contacts[k] + normals[k] * (AGENT_RADIUS + c.contact_gap)
        if k == current:
            height = float(np.dot(lead - contacts[k], normals[k]))
            if height < AGENT_RADIUS - length + 1.0:
                return None  # already deeper than this push length
            start = contacts[k] + normals[k] * height  # the lead point on the push line
            return self._push_targets(start, pre, normals[k], length, speed)
        path = approach_path(lead, pre, pose, c)
        if path is None:
            return None
        targets = polyline_targets([lead, *path], c.approach_speed, c.min_step)
        return targets + self._push_targets(pre, pre, normals[k], length, speed)

    def plan(self, state: SimState) -> Primitive:
        """Choose the next primitive for the env state `state`; see the module docstring."""
        t0, c0 = time.perf_counter(), time.process_time()
        c = self.config
        pose = state.block_pose
        block = world_polygon(pose)
        rot = rotation(float(pose[2]))
        contacts = self._contact_points @ rot.T + pose[:2]
        normals = self._contact_normals @ rot.T
        fine = pose_error(pose) < c.fine_error
        max_push = c.fine_max_push if fine else c.max_push
        push_speed = c.fine_push_speed if fine else c.push_speed
        agent = np.array(state.agent_pos)
        # Plan from where the PD law's target would be now, so replanning mid-motion keeps the
        # agent's speed instead of braking at every replan.
        lead = np.clip(agent + PD_LEAD_S * np.array(state.agent_vel), ARENA_LOW, ARENA_HIGH)
        current = self._on_line(lead, contacts, normals)
        scored: list[tuple[float, int, float]] = []
        current_scored: list[tuple[float, int, float]] = []
        for k in range(len(contacts)):
            pre = contacts[k] + normals[k] * (AGENT_RADIUS + c.contact_gap)
            if not (ARENA_LOW <= pre[0] <= ARENA_HIGH and ARENA_LOW <= pre[1] <= ARENA_HIGH):
                continue
            if sg.Point(pre).distance(block) < AGENT_RADIUS + c.contact_gap - 0.5:
                continue  # inside a concave corner: the agent would hit the other arm
            probe = self._probe(state, pre, normals[k], max_push, push_speed)
            for error, reached in probe:  # every depth reached is a candidate push length
                scored.append((round(error, 3), k, round(reached, 3)))
                if k == current:
                    current_scored.append(scored[-1])
        scored.sort()
        current_scored.sort()
        # Simulated in full: the best `top_k` distinct reachable primitives, plus the best
        # continuations of the push line the agent is on (the hysteresis candidates).
        best: Primitive | None = None
        best_score = np.inf
        tried: list[tuple[int, float]] = []
        for pool, limit in ((scored, c.top_k), (current_scored, c.top_k + 2)):
            for _, k, length in pool:
                if len(tried) >= limit:
                    break
                if any(k == k2 and abs(length - l2) <= 3.0 for k2, l2 in tried):
                    continue  # near-duplicate of a primitive already simulated
                targets = self._candidate(k, length, lead, current, contacts, normals, pose)
                if targets is None:
                    continue
                tried.append((k, length))
                arr, after, success_at = self._rollout_until_success(state, targets)
                error = pose_error(after.block_pose)
                if success_at is not None:
                    arr, score = arr[: success_at + 1], -1e6 + success_at
                else:
                    score = error + c.step_cost * len(arr)
                    score += c.switch_margin if k != current else 0.0
                if score < best_score:
                    best_score, best = score, Primitive(arr, after, error, k)
        if best is None:  # nothing reachable (e.g. trapped by a wall): head for open space
            centre = np.array([256.0, 256.0])
            path = approach_path(lead, centre, pose, c)
            waypoints = [lead, *path] if path else [lead, centre]
            targets = polyline_targets(waypoints, c.approach_speed, c.min_step)[: c.replan_every]
            arr, after = self._rollout(state, targets or [lead])
            best = Primitive(arr, after, pose_error(after.block_pose))
        self.planning_seconds += time.perf_counter() - t0
        self.planning_cpu_seconds += time.process_time() - c0
        return best

    def next_targets(self, state: SimState) -> np.ndarray:
        """The targets to execute before planning again: [<= replan_every, 2]."""
        return self.plan(state).targets[: self.config.replan_every]

    def chunk_with_states(
        self, state: SimState, horizon: int, *, plan_once: bool = False
    ) -> tuple[np.ndarray, list[SimState], np.ndarray]:
        """The expert's next `horizon` targets [horizon, 2] float32 from `state`, replanning in
        the simulator every `replan_every` steps exactly as an episode does, the state before
        each target (`states[0] is state`) and where it planned afresh: the label of any state,
        e.g. one a learner visited. `plan_once` follows the first plan for as long as it lasts
        (one plan per label instead of one per `replan_every` steps): the whole chunk is then a
        function of `state` alone, at half the planning cost of a 15-step label."""
        targets: list[np.ndarray] = []
        states = [state]
        replanned = np.zeros(horizon, dtype=bool)
        while len(targets) < horizon:
            replanned[len(targets)] = True
            primitive = self.plan(states[-1])
            every = len(primitive.targets) if plan_once else self.config.replan_every
            n = min(every, len(primitive.targets), horizon - len(targets))
            self.sim.load(states[-1])
            for target in primitive.targets[:n]:
                self.sim.step(target)
                targets.append(target)
                states.append(self.sim.save())
        return np.asarray(targets, dtype=np.float32), states[:horizon], replanned


def _block_fields(state: SimState) -> tuple:
    return (state.block_pos, state.block_angle, state.block_vel, state.block_angular_vel)
