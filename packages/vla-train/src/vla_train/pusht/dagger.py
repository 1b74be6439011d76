"""Expert-in-the-loop data for PushT: DAgger rounds (Ross, Gordon, Bagnell, AISTATS 2011).

A round rolls the current policy out in gym-pusht on fresh seeds. At every decision point (each
time the policy is queried) the visited state is labelled with the replanning expert's action
chunk; with probability beta**round the expert's chunk is executed instead of the policy's (the
mixture pi_i = beta_i pi* + (1 - beta_i) pi_hat_i). Each labelled state becomes a short episode:
the policy's last `n_obs_steps - 1` observations with the actions it executed, then the state
itself and the expert's continuation, replayed in the cloned simulator. A round's episodes are
written as one LeRobot v3.0 dataset, `<run_dir>/dagger/round-NNN`, so a killed run loses no
finished round and the data can be reused and inspected like any other dataset.
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

from vla_train.atomic import atomic_dir, atomic_write_json
from vla_train.data.layout import FeatureSpec, load_json
from vla_train.data.writer import LeRobotWriter
from vla_train.eval.rollout import env_obs_to_frame, stack_obs
from vla_train.pusht.episodes import FPS, TASK, make_env
from vla_train.pusht.labels import ExpertLabeler, Label
from vla_train.pusht.sim import snapshot

ROUND_META = "meta/dagger_round.json"
#: The columns of a DAgger episode (no reward/success: the expert's continuation is simulated).
DAGGER_FEATURES = {
    "observation.state": FeatureSpec("float32", (2,), ("x", "y")),
    "observation.environment_state": FeatureSpec("float32", (16,)),
    "action": FeatureSpec("float32", (2,), ("x", "y")),
    # True at the labelled state and wherever the expert's continuation planned afresh.
    "expert.replanned": FeatureSpec("bool", (1,)),
}


@dataclass(frozen=True)
class DaggerConfig:
    """`rounds` rounds, one every `every_steps` optimizer steps (the first after `every_steps`),
    each on `episodes_per_round` seeds from `first_seed` on (far from the demo seeds 0.. and the
    test seeds 100000..100199). Round r executes the expert with probability `beta**r`.
    Besides each state the policy is queried in, `label_every > 0` also labels the visited state
    every `label_every` executed steps (the policy is queried at arbitrary plan phases, so every
    visited state is a decision point worth a label); `plan_once` labels each state with one
    fresh plan (`PushTExpert.chunk_with_states`). `overlap` runs each round in a background
    process while training continues (`vla_train.pusht.background`); its data then joins the
    training set `every_steps` steps after the round starts."""

    rounds: int = 0
    every_steps: int = 1000
    episodes_per_round: int = 20
    beta: float = 0.5
    first_seed: int = 1_000_000
    n_envs: int = 10
    workers: int = 2
    max_steps: int = 300
    label_every: int = 0
    plan_once: bool = False
    overlap: bool = False

    def __post_init__(self) -> None:
        if self.rounds < 0:
            raise ValueError(f"task.dagger.rounds={self.rounds}: expected >= 0")
        if self.label_every < 0:
            raise ValueError(f"task.dagger.label_every={self.label_every}: expected >= 0")
        for name in ("every_steps", "episodes_per_round", "n_envs", "workers", "max_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"task.dagger.{name}={getattr(self, name)}: expected >= 1")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"task.dagger.beta={self.beta}: expected a probability in [0, 1]")
        if self.first_seed < 0:
            raise ValueError(f"task.dagger.first_seed={self.first_seed}: expected >= 0")
        test = range(100_000, 100_200)
        last = self.first_seed + self.rounds * self.episodes_per_round
        if self.rounds and self.first_seed < test.stop and last > test.start:
            raise ValueError(
                f"task.dagger.first_seed={self.first_seed}: rounds would use the test seeds "
                f"{test.start}..{test.stop - 1}; pick seeds outside them"
            )

    def step_of_round(self, round_index: int) -> int:
        """The optimizer step after which round `round_index` (1-based) runs."""
        return self.every_steps * round_index

    def beta_of_round(self, round_index: int) -> float:
        return float(self.beta**round_index)

    def seeds_of_round(self, round_index: int) -> list[int]:
        first = self.first_seed + (round_index - 1) * self.episodes_per_round
        return list(range(first, first + self.episodes_per_round))


@dataclass
class RoundResult:
    """What a round measured: the rolled-out mixture policy's success on its fresh seeds."""

    round: int
    step: int
    beta: float
    seeds: list[int]
    success: list[bool]
    max_coverage: list[float]
    n_labels: int
    n_frames: int
    rollout_s: float
    label_s: float
    elapsed_s: float = 0.0  # wall time since the run started (filled in by the trainer)
    dataset: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.success))

    @property
    def mean_max_coverage(self) -> float:
        return float(np.mean(self.max_coverage))

    def summary(self) -> dict[str, float]:
        return {
            "dagger/round": float(self.round),
            "dagger/beta": self.beta,
            "dagger/success_rate": self.success_rate,
            "dagger/mean_max_coverage": self.mean_max_coverage,
            "dagger/labels": float(self.n_labels),
        }

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(success_rate=self.success_rate, mean_max_coverage=self.mean_max_coverage)
        return out


def round_dir(run_dir: Path, round_index: int) -> Path:
    return Path(run_dir) / "dagger" / f"round-{round_index:03d}"


def load_round_result(run_dir: Path, round_index: int) -> RoundResult | None:
    """The result of a finished round written by `run_round`, or None."""
    path = round_dir(run_dir, round_index) / ROUND_META
    if not path.is_file():
        return None
    fields = {k: v for k, v in load_json(path).items() if k in RoundResult.__dataclass_fields__}
    return RoundResult(**fields)


def _frame(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return env_obs_to_frame(obs, "environment_state_agent_pos")


def _label_episode(
    past: Sequence[tuple[dict[str, np.ndarray], np.ndarray]],
    current: dict[str, np.ndarray],
    label: Label,
) -> dict[str, np.ndarray]:
    """Columns of one labelled state: `past` (frame, executed action) pairs, the current frame,
    then the expert's continuation (observations replayed in the simulator)."""
    states = [f["observation.state"] for f, _ in past] + [current["observation.state"]]
    keypoints = [f["observation.environment_state"] for f, _ in past]
    keypoints.append(current["observation.environment_state"])
    actions = [a for _, a in past]
    states.extend(label.agent_pos[1:])
    keypoints.extend(label.keypoints[1:])
    actions.extend(label.actions)
    replanned = np.concatenate([np.zeros(len(past), bool), label.replanned])
    return {
        "observation.state": np.stack(states).astype(np.float32),
        "observation.environment_state": np.stack(keypoints).astype(np.float32),
        "action": np.stack(actions).astype(np.float32),
        "expert.replanned": replanned,
    }


@torch.no_grad()
def collect_round(
    predict_action: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    labeler: ExpertLabeler,
    config: DaggerConfig,
    round_index: int,
    *,
    obs_keys: Sequence[str],
    n_obs_steps: int,
    horizon: int,
    device: torch.device,
) -> tuple[list[dict[str, np.ndarray]], RoundResult]:
    """Roll out one round; returns the labelled episodes and what the round measured."""
    t0 = time.perf_counter()
    beta = config.beta_of_round(round_index)
    seeds = config.seeds_of_round(round_index)
    rng = np.random.default_rng([config.first_seed, round_index])
    label_length = horizon - n_obs_steps + 1  # the window's actions from the current step on
    episodes: list[dict[str, np.ndarray]] = []
    success = [False] * len(seeds)
    max_coverage = [0.0] * len(seeds)
    label_s = 0.0
    n_envs = min(config.n_envs, len(seeds))
    envs = [make_env(max_steps=config.max_steps) for _ in range(n_envs)]
    try:
        for first in range(0, len(seeds), n_envs):
            group = list(range(first, min(first + n_envs, len(seeds))))
            frames: list[deque[dict[str, np.ndarray]]] = []
            past: list[deque[tuple[dict[str, np.ndarray], np.ndarray]]] = []
            steps = [0] * len(group)
            for slot, ep in enumerate(group):
                obs, _ = envs[slot].reset(seed=seeds[ep])
                frames.append(deque([_frame(obs)], maxlen=n_obs_steps))
                past.append(deque(maxlen=n_obs_steps - 1))
            active = list(range(len(group)))
            while active:
                tic = time.perf_counter()
                labels = labeler([snapshot(envs[s]) for s in active], label_length)
                label_s += time.perf_counter() - tic
                # Reset frames repeat until the window is full, as in evaluation.
                history = [
                    [frames[s][0]] * (n_obs_steps - len(frames[s])) + list(frames[s])
                    for s in active
                ]
                obs_batch = stack_obs(history, obs_keys, device)
                chunks = predict_action(obs_batch)["action"].float().cpu().numpy()
                still_active = []
                # Visited states between queries to label too: (snapshot, past, current frame).
                between: list[tuple[Any, list[Any], dict[str, np.ndarray]]] = []
                for row, slot in enumerate(active):
                    ep = group[slot]
                    label = labels[row]
                    episodes.append(_label_episode(list(past[slot]), frames[slot][-1], label))
                    chunk = chunks[row]
                    if rng.random() < beta:
                        chunk = label.actions[: len(chunk)]
                    done = False
                    for j, action in enumerate(chunk, start=1):
                        past[slot].append((frames[slot][-1], np.asarray(action, np.float32)))
                        obs, _, terminated, truncated, info = envs[slot].step(action)
                        steps[slot] += 1
                        frames[slot].append(_frame(obs))
                        max_coverage[ep] = max(max_coverage[ep], float(info["coverage"]))
                        success[ep] = success[ep] or bool(terminated)
                        if terminated or truncated or steps[slot] >= config.max_steps:
                            done = True
                            break
                        if config.label_every and j < len(chunk) and j % config.label_every == 0:
                            between.append(
                                (snapshot(envs[slot]), list(past[slot]), frames[slot][-1])
                            )
                    if not done:
                        still_active.append(slot)
                if between:
                    tic = time.perf_counter()
                    extra = labeler([b[0] for b in between], label_length)
                    label_s += time.perf_counter() - tic
                    for (_, pairs, frame), label in zip(between, extra, strict=True):
                        episodes.append(_label_episode(pairs, frame, label))
                active = still_active
    finally:
        for env in envs:
            env.close()
    result = RoundResult(
        round=round_index,
        step=config.step_of_round(round_index),
        beta=beta,
        seeds=seeds,
        success=success,
        max_coverage=max_coverage,
        n_labels=len(episodes),
        n_frames=sum(len(e["action"]) for e in episodes),
        rollout_s=time.perf_counter() - t0 - label_s,
        label_s=label_s,
    )
    return episodes, result


def write_round(run_dir: Path, episodes: list[dict[str, np.ndarray]], result: RoundResult) -> Path:
    """Write a round's episodes as a LeRobot v3.0 dataset with the round's measurements in
    `meta/dagger_round.json`. The folder appears only once complete (staged by
    `vla_train.atomic.atomic_dir`); a round redone after a resume (same weights, same seeds)
    replaces its earlier copy."""
    root = round_dir(run_dir, result.round)
    result.dataset = str(root)
    with atomic_dir(root) as staging:
        writer = LeRobotWriter(staging, DAGGER_FEATURES, FPS, TASK, overwrite=True)
        for episode in episodes:
            writer.add_episode(episode)
        atomic_write_json(writer.finalize() / ROUND_META, result.to_dict())
    return root
