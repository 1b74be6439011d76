"""Policy rollouts in gym-pusht for the training loop: evaluation on the test seeds and the
expert-in-the-loop (DAgger) rounds, both with world-frame observations and targets whatever frame
the policy itself works in (`task.frame`). Moved from trainer/rollouts.py (issue #19). Every rollout runs under a forked, fixed RNG so it never
perturbs training randomness."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vla_train.eval import EvalResult, evaluate
from vla_train.pusht.dagger import DaggerConfig, RoundResult, collect_round, write_round
from vla_train.pusht.frames import BlockFrameDataset, block_frame_policy, check_frame
from vla_train.pusht.labels import ExpertLabeler

if TYPE_CHECKING:
    from vla_train.config import PushTConfig


def obs_keys(cfg: PushTConfig) -> tuple[str, ...]:
    return (*[str(k) for k in cfg.task.lowdim_keys], *[str(k) for k in cfg.task.image_keys])


def run_evaluation(
    model: Any,
    cfg: PushTConfig,
    device: torch.device,
    video_dir: Path | None,
    num_inference_steps: int | None = None,
) -> EvalResult:
    """gym-pusht rollouts of `model` under a forked, fixed RNG (sampling noise is reproducible
    and training randomness is left untouched). `num_inference_steps` overrides the policy's
    sampler steps (None: the policy's own)."""
    e = cfg.eval
    predict = world_policy(model, cfg)
    if num_inference_steps is not None:
        predict = functools.partial(predict, num_inference_steps=int(num_inference_steps))
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(e.start_seed))
            return evaluate(
                predict,
                obs_type=str(cfg.task.env_obs_type),
                obs_keys=obs_keys(cfg),
                n_obs_steps=int(cfg.task.n_obs_steps),
                n_episodes=int(e.n_test),
                start_seed=int(e.start_seed),
                max_steps=int(e.max_steps),
                n_envs=int(e.n_envs),
                device=device,
                video_dir=video_dir,
                n_videos=int(e.n_videos),
                video_size=int(e.video_size),
            )
    finally:
        model.train(was_training)


def world_policy(model: Any, cfg: PushTConfig) -> Any:
    """`model.predict_action` taking and returning world-frame PushT observations / targets
    (the policy itself may work in the block frame, `task.frame=block`)."""
    frame = check_frame(cfg.task.frame)
    if frame.startswith("block"):
        return block_frame_policy(model.predict_action, relative=frame == "block_relative")
    return model.predict_action


def in_policy_frame(windows: Any, cfg: PushTConfig) -> Any:
    """Training windows as the policy sees them (`task.frame`)."""
    frame = check_frame(cfg.task.frame)
    if frame.startswith("block"):
        return BlockFrameDataset(windows, relative=frame == "block_relative")
    return windows


def run_dagger_round(
    model: Any,
    cfg: PushTConfig,
    dagger: DaggerConfig,
    round_index: int,
    labeler: ExpertLabeler,
    run_dir: Path,
) -> RoundResult:
    """One expert-in-the-loop round with `model` (under a forked RNG seeded by the round, so it
    never perturbs training randomness); its data is written before this returns."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(dagger.first_seed + round_index)
            episodes, result = collect_round(
                world_policy(model, cfg),
                labeler,
                dagger,
                round_index,
                obs_keys=obs_keys(cfg),
                n_obs_steps=int(cfg.task.n_obs_steps),
                horizon=int(cfg.task.horizon),
                device=device,
            )
    finally:
        model.train(was_training)
    write_round(run_dir, episodes, result)
    return result
