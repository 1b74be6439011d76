"""DAgger rounds in a background process, overlapped with training (`task.dagger.overlap`).

A synchronous round stops training while the policy is rolled out and every visited state is
labelled by the expert (≈ 30 s per round on two cores for the default). With a one-thread
trainer the second core is idle the rest of the time, so an overlapped round instead runs in a
spawned process on a snapshot of the weights at its launch step, while training continues on
the data it already has; its data joins the training set `every_steps` steps later (so the
policy that collects a round is `every_steps` steps older than the one it then trains). The
snapshot is written next to the round's dataset (`dagger/round-NNN.policy.safetensors`), so a
run resumed while a round was in flight redoes it from the same weights and seeds: the result
is the same as if it had never stopped.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save
from torch import nn

from vla_train.atomic import atomic_write_bytes
from vla_train.pusht.dagger import RoundResult, load_round_result, round_dir

if TYPE_CHECKING:
    from vla_train.config import PushTConfig


def snapshot_path(run_dir: Path, round_index: int) -> Path:
    folder = round_dir(run_dir, round_index)
    return folder.with_name(folder.name + ".policy.safetensors")


def save_snapshot(model: nn.Module, path: Path) -> None:
    """The policy's weights (unwrapped from torch.compile / DDP) to `path`, atomically."""
    inner = getattr(model, "_orig_mod", model)
    inner = getattr(inner, "module", inner)
    weights = {k: v.detach().cpu().contiguous() for k, v in inner.state_dict().items()}
    atomic_write_bytes(path, save(weights))


def _round_job(cfg: PushTConfig, round_index: int, weights: str, run_dir: str) -> RoundResult:
    """In the background process: rebuild the policy from `weights`, run and write the round."""
    from vla_imf import IMFPolicy
    from vla_train.checkpoint import load_weights
    from vla_train.pusht.labels import ExpertLabeler
    from vla_train.pusht.rollouts import run_dagger_round

    torch.set_num_threads(1)  # one core for the round; the trainer keeps the other
    model = IMFPolicy(cfg.policy)
    load_weights(model, Path(weights))
    dagger = cfg.task.dagger
    with ExpertLabeler(
        dagger.workers, plan_once=dagger.plan_once, expert=cfg.task.expert
    ) as labeler:
        return run_dagger_round(model, cfg, dagger, round_index, labeler, Path(run_dir))


class BackgroundRounds:
    """At most one round in flight: `launch(model, r)` snapshots the weights and starts round `r`
    in a spawned process; `wait(r)` returns its result (blocking only if it is not done yet) and
    reports the seconds training waited for it in `result.extra["wait_s"]`."""

    def __init__(self, cfg: PushTConfig, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self._executor: ProcessPoolExecutor | None = None
        self._inflight: tuple[int, Future[RoundResult] | RoundResult] | None = None

    def launch(self, model: nn.Module | None, round_index: int) -> None:
        """Start round `round_index`. `model=None` resumes one launched before a restart: its
        finished dataset is reused, else it is redone from the snapshot saved at launch."""
        if self._inflight is not None:
            raise RuntimeError(f"DAgger round {self._inflight[0]} is still in flight")
        weights = snapshot_path(self.run_dir, round_index)
        if model is not None:
            save_snapshot(model, weights)
        else:
            done = load_round_result(self.run_dir, round_index)
            if done is not None:
                self._inflight = (round_index, done)
                return
            if not weights.is_file():
                raise FileNotFoundError(
                    f"{weights}: the weights DAgger round {round_index} was launched with are "
                    "missing, so the resumed run cannot redo it"
                )
        if self._executor is None:
            ctx = multiprocessing.get_context("spawn")
            self._executor = ProcessPoolExecutor(1, mp_context=ctx)
        job = (self.cfg, round_index, str(weights), str(self.run_dir))
        self._inflight = (round_index, self._executor.submit(_round_job, *job))

    def wait(self, round_index: int) -> RoundResult:
        if self._inflight is None or self._inflight[0] != round_index:
            raise RuntimeError(f"DAgger round {round_index} was not launched")
        tic = time.perf_counter()
        pending = self._inflight[1]
        result = pending.result() if isinstance(pending, Future) else pending
        self._inflight = None
        extra = {**result.extra, "wait_s": time.perf_counter() - tic}
        return dataclasses.replace(result, extra=extra)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._inflight = None

    def __enter__(self) -> BackgroundRounds:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
