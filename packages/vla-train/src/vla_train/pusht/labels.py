"""Expert labels for arbitrary PushT states, computed in worker processes.

A label is what the replanning expert does next from a state: its action chunk and the
observations it passes through (replayed in the cloned simulator), so a visited state plus its
label is a short, proper episode. Workers hold one expert each (`task.expert`); jobs are plain
`SimState`s, so nothing but numbers crosses the process boundary.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla_train.pusht.controller import PushController, make_expert
from vla_train.pusht.expert import T_KEYPOINTS, ExpertConfig, PushTExpert, to_world
from vla_train.pusht.sim import SimState


@dataclass(frozen=True)
class Label:
    """The expert's next `len(actions)` targets from a state and the observations before each:
    `agent_pos[0]`, `keypoints[0]` describe the state itself."""

    actions: np.ndarray  # [L, 2] float32 absolute targets
    agent_pos: np.ndarray  # [L, 2] float32
    keypoints: np.ndarray  # [L, 16] float32, gym-pusht's `environment_state`
    replanned: np.ndarray  # [L] bool: the expert planned afresh before this action


def observe(state: SimState) -> tuple[np.ndarray, np.ndarray]:
    """gym-pusht's `environment_state_agent_pos` observation of a state (agent_pos, keypoints)."""
    keypoints = to_world(state.block_pose, T_KEYPOINTS).reshape(-1)
    return np.asarray(state.agent_pos, np.float32), keypoints.astype(np.float32)


Expert = PushTExpert | PushController
_EXPERT: Expert | None = None


def _worker_init(kind: str, config: ExpertConfig | None) -> None:
    global _EXPERT
    _EXPERT = make_expert(kind, config)


def label_state(expert: Expert, state: SimState, length: int, plan_once: bool = False) -> Label:
    """The expert's chunk of `length` targets from `state`, with the observations it visits
    (`plan_once`: see `PushTExpert.chunk_with_states`)."""
    actions, states, replanned = expert.chunk_with_states(state, length, plan_once=plan_once)
    observed = [observe(s) for s in states]
    return Label(
        actions=actions,
        agent_pos=np.stack([o[0] for o in observed]),
        keypoints=np.stack([o[1] for o in observed]),
        replanned=replanned,
    )


def _label_job(job: tuple[SimState, int, bool]) -> Label:
    assert _EXPERT is not None, "worker not initialised"
    return label_state(_EXPERT, *job)


class ExpertLabeler:
    """`labeler(states, length)` -> one `Label` per state, in order, over `workers` processes
    (spawned once and reused; `workers=1` labels in this process). `plan_once`: every label
    follows one fresh plan (`PushTExpert.chunk_with_states`). `expert`: "planner" (`config` its
    knobs) or "controller"."""

    def __init__(
        self,
        workers: int = 1,
        config: ExpertConfig | None = None,
        plan_once: bool = False,
        expert: str = "planner",
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers={workers}: expected >= 1")
        self.workers = workers
        self.config = config
        self.kind = expert
        self.plan_once = plan_once
        self._expert = make_expert(expert, config) if workers == 1 else None
        self._pool: Any = None

    def __call__(self, states: list[SimState], length: int) -> list[Label]:
        if self._expert is not None:
            return [label_state(self._expert, s, length, self.plan_once) for s in states]
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ctx.Pool(self.workers, _worker_init, (self.kind, self.config))
        jobs = [(s, length, self.plan_once) for s in states]
        return list(self._pool.map(_label_job, jobs, chunksize=1))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> ExpertLabeler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
