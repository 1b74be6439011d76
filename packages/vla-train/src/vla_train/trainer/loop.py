"""The training loop: data -> iMF loss -> AdamW/cosine/EMA -> checkpoints -> gym-pusht eval,
with optional expert-in-the-loop rounds (`task.dagger`) that grow the training set mid-run.

Determinism: the model is initialised from `seed` on every rank (DDP also broadcasts rank 0's
weights), the per-step noise comes from the torch RNG seeded with `seed + rank`, the data order
from `ShardedEpochSampler(seed, epoch)`. Checkpoints hold every RNG state (per rank) and the
(epoch, batch, DAgger round) position, so `resume=true` replays the exact loss curve of an
uninterrupted run.
Evaluation runs under a forked RNG so it never perturbs training randomness.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vla_imf import IMFPolicy
from vla_train.eval import action_latency_ms, first_observation
from vla_train.pusht.dagger import load_round_result
from vla_train.pusht.labels import ExpertLabeler
from vla_train.trainer.build import (
    build_dataset,
    dagger_config,
    dataset_root,
    policy_config,
    to_plain,
    with_dagger_rounds,
)
from vla_train.trainer.checkpoint import (
    Position,
    atomic_write_text,
    latest_checkpoint,
    load_train_state,
    load_weights,
    save_checkpoint,
    set_rng_state,
)
from vla_train.trainer.distributed import (
    DistInfo,
    ShardedEpochSampler,
    barrier,
    init_distributed,
    replica_divergence,
    shutdown,
)
from vla_train.trainer.ema import EMA
from vla_train.trainer.loggers import MetricLogger, NullLogger, build_logger
from vla_train.trainer.rollouts import (
    in_policy_frame,
    obs_keys,
    run_dagger_round,
    run_evaluation,
    world_policy,
)
from vla_train.trainer.schedule import build_scheduler

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"  # final results of a run (what `vla-train-report` collects)
CURVE_FILE = "train_log.jsonl"  # one JSON line per logged step


class LossModule(nn.Module):
    """Makes `compute_loss` the module's forward, so DDP's gradient hooks see the real step."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.policy.compute_loss(batch)  # type: ignore[operator]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _rank_rng_states(info: DistInfo) -> list[Any]:
    from vla_train.trainer.checkpoint import rng_state

    state = rng_state()
    if not info.enabled:
        return [state]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, state)
    return gathered


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train + evaluate one policy into `run_dir`; returns the metrics written to metrics.json
    (on rank 0; other ranks return {})."""
    info = init_distributed(str(cfg.device))
    try:
        return _train(cfg, Path(run_dir), info)
    finally:
        shutdown(info)


def _train(cfg: DictConfig, run_dir: Path, info: DistInfo) -> dict[str, Any]:
    tc = cfg.train
    device = info.device
    run_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    if tc.get("num_threads"):
        # Small models gain nothing from intra-op threads and lose ~24x when another process
        # competes for the cores (OpenMP spin-waits); BENCHMARKS.md has the measurements.
        torch.set_num_threads(int(tc.num_threads))
    dagger = dagger_config(cfg)

    # Data: rank 0 generates/caches the default dataset first; the others then read the cache.
    if info.is_main:
        root = dataset_root(cfg)
    barrier(info)
    if not info.is_main:
        root = dataset_root(cfg)
    demos = build_dataset(cfg, root)
    data_s = time.perf_counter() - t_start

    pcfg = policy_config(cfg)
    seed_everything(int(cfg.seed))  # identical initial weights on every rank
    policy = IMFPolicy(pcfg)
    # Fixed from the demos (in the policy's frame): DAgger rounds don't move the normalizer.
    policy.fit_normalizer(in_policy_frame(demos, cfg).stats())
    policy.to(device)
    optimizer = policy.configure_optimizers(
        weight_decay=float(tc.weight_decay),
        learning_rate=float(tc.learning_rate),
        betas=(float(tc.betas[0]), float(tc.betas[1])),
    )
    max_steps = int(tc.max_steps)
    scheduler = build_scheduler(
        optimizer,
        warmup_steps=int(tc.warmup_steps),
        max_steps=max_steps,
        min_ratio=float(tc.min_lr_ratio),
    )
    ema = (
        EMA(
            policy,
            power=float(tc.ema.power),
            max_decay=float(tc.ema.max_decay),
            min_decay=float(tc.ema.min_decay),
            update_after_step=int(tc.ema.update_after_step),
        )
        if tc.ema.enabled
        else None
    )
    config_json = {"policy": asdict(pcfg), "hydra": to_plain(cfg)}

    position = Position(step=0, epoch=0, batch=0)
    ckpt = latest_checkpoint(run_dir) if cfg.resume else None
    if cfg.resume and ckpt is None and info.is_main:
        log.info("resume=true but no checkpoint in %s: starting from scratch", run_dir)
    if ckpt is not None:
        state = load_train_state(ckpt)
        load_weights(policy, ckpt / "model.safetensors")
        if ema is not None:
            load_weights(ema.model, ckpt / "ema.safetensors")
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        position = Position(**state["position"])
        rng = state["rng"]
        if len(rng) != info.world_size:
            raise RuntimeError(
                f"checkpoint {ckpt} was written by {len(rng)} processes, resuming with "
                f"{info.world_size}: data order and noise would not match"
            )
        set_rng_state(rng[info.rank])
        if info.is_main:
            log.info("resumed from %s at step %d", ckpt, position.step)
    else:
        seed_everything(int(cfg.seed) + info.rank)  # per-rank noise stream

    loss_module: nn.Module = LossModule(policy)
    if info.enabled:
        loss_module = DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    # Static shapes: every batch has the same size (the sampler drops the ragged tail).
    loss_fn: Any = torch.compile(loss_module, dynamic=False) if tc.compile else loss_module
    rounds_done = position.dagger_round
    dagger_results = [load_round_result(run_dir, r) for r in range(1, rounds_done + 1)]

    def make_data(rounds: int) -> tuple[Any, ShardedEpochSampler]:
        data = in_policy_frame(with_dagger_rounds(demos, run_dir, rounds), cfg)
        epoch_sampler = ShardedEpochSampler(
            len(data),
            int(tc.batch_size),
            rank=info.rank,
            world_size=info.world_size,
            seed=int(cfg.seed),
        )
        if len(epoch_sampler) == 0:
            raise ValueError(f"no batch fits: {len(data)} windows, batch_size={tc.batch_size}")
        return data, epoch_sampler

    dataset, sampler = make_data(rounds_done)
    labeler = (
        ExpertLabeler(dagger.workers, plan_once=dagger.plan_once)
        if dagger.rounds and info.is_main
        else None
    )
    logger: MetricLogger = NullLogger()
    if info.is_main:
        logger = build_logger(
            str(cfg.logger.backend),
            run_dir=run_dir,
            project=str(cfg.logger.project),
            run_name=str(cfg.run_name),
            mode=str(cfg.logger.mode),
            config=config_json["hydra"],
        )
        log.info(
            "run %s: %d windows, %d batches/epoch/rank, %d params, world %d, device %s",
            cfg.run_name,
            len(dataset),
            len(sampler),
            sum(p.numel() for p in policy.parameters()),
            info.world_size,
            device,
        )
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and tc.amp_bf16
        else contextlib.nullcontext()
    )
    every_epochs = int(cfg.eval.every_epochs)
    log_every = max(1, int(tc.log_every_steps))
    ckpt_every = int(tc.checkpoint_every_steps)

    def checkpoint(pos: Position, name: str | None = None) -> None:
        rng = _rank_rng_states(info)
        if info.is_main:
            save_checkpoint(
                run_dir,
                position=pos,
                model=policy,
                ema_model=ema.model if ema is not None else None,
                config=config_json,
                train_state={
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "ema": ema.state_dict() if ema is not None else {},
                    "rng": rng,
                },
                keep_last=int(tc.keep_last_checkpoints),
                name=name,
            )
        barrier(info)

    def batches(epoch: int, start: int) -> Iterator[dict[str, torch.Tensor]]:
        loader = DataLoader(
            dataset,
            batch_sampler=list(sampler.batches(epoch, start)),
            num_workers=int(tc.num_workers),
            pin_memory=device.type == "cuda",
            # Own generator: creating a loader must not draw from the global RNG (that would
            # shift the noise stream of a resumed run) and worker seeds stay reproducible.
            generator=torch.Generator().manual_seed(int(cfg.seed) * 7919 + epoch),
        )
        yield from loader

    curve = (run_dir / CURVE_FILE).open("a") if info.is_main else None
    pbar = tqdm(
        total=max_steps,
        initial=position.step,
        disable=not (info.is_main and tc.progress_bar),
        desc=str(cfg.run_name),
        dynamic_ncols=True,
    )
    step, epoch, batch_idx = position.step, position.epoch, position.batch
    recent: list[float] = []
    t_train = time.perf_counter()
    loss_module.train()
    try:
        while step < max_steps:
            for batch in batches(epoch, batch_idx):
                batch = _to_device(batch, device)
                with amp:
                    loss = loss_fn(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = (
                    torch.nn.utils.clip_grad_norm_(policy.parameters(), float(tc.grad_clip_norm))
                    if tc.grad_clip_norm and tc.grad_clip_norm > 0
                    else None
                )
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update(policy)
                step += 1
                batch_idx += 1
                if step % log_every == 0 or step == max_steps:
                    value = loss.detach().float()
                    if info.enabled:
                        dist.all_reduce(value)
                        value /= info.world_size
                    loss_value = float(value)
                    lr = scheduler.get_last_lr()[0]
                    recent = [*recent[-49:], loss_value]
                    metrics: dict[str, float] = {
                        "train/loss": loss_value,
                        "train/lr": float(lr),
                        "train/epoch": float(epoch),
                    }
                    if grad_norm is not None:
                        metrics["train/grad_norm"] = float(grad_norm)
                    if info.is_main:
                        logger.log(metrics, step)
                        assert curve is not None
                        curve.write(json.dumps({"step": step, **metrics}) + "\n")
                        curve.flush()
                        pbar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", refresh=False)
                pbar.update(1)
                if batch_idx >= len(sampler):
                    epoch, batch_idx = epoch + 1, 0
                if (ckpt_every > 0 and step % ckpt_every == 0) or step == max_steps:
                    checkpoint(Position(step, epoch, batch_idx, rounds_done))
                if step >= max_steps:
                    break
                if rounds_done < dagger.rounds and step == dagger.step_of_round(rounds_done + 1):
                    rounds_done += 1
                    if info.is_main:
                        assert labeler is not None and curve is not None
                        result = run_dagger_round(
                            ema.model if ema else policy, cfg, dagger, rounds_done, labeler, run_dir
                        )
                        result.elapsed_s = time.perf_counter() - t_start
                        dagger_results.append(result)
                        logger.log(result.summary(), step)
                        curve.write(json.dumps({"step": step, **result.summary()}) + "\n")
                        curve.flush()
                        pbar.write(
                            f"DAgger round {rounds_done}/{dagger.rounds} (beta {result.beta:.2f}): "
                            f"success {result.success_rate:.2f}, coverage "
                            f"{result.mean_max_coverage:.3f} on {len(result.seeds)} fresh seeds; "
                            f"+{result.n_labels} labelled states "
                            f"({result.rollout_s:.0f} s rollout, {result.label_s:.0f} s labels)"
                        )
                    barrier(info)
                    dataset, sampler = make_data(rounds_done)  # demos + every round so far
                    epoch, batch_idx = epoch + 1, 0
                    checkpoint(Position(step, epoch, batch_idx, rounds_done))
                    break  # a fresh loader over the grown dataset
                if batch_idx == 0 and every_epochs > 0 and epoch % every_epochs == 0:
                    if info.is_main:
                        res = run_evaluation(ema.model if ema else policy, cfg, device, None)
                        logger.log(res.summary(), step)
                        assert curve is not None
                        curve.write(json.dumps({"step": step, **res.summary()}) + "\n")
                        curve.flush()
                        log.info(
                            "epoch %d step %d: success %.3f coverage %.3f",
                            epoch,
                            step,
                            res.success_rate,
                            res.mean_max_coverage,
                        )
                    barrier(info)
                    break  # restart the epoch's loader at (epoch, 0)
            # An epoch ended without eval: continue with a fresh loader for the next one.
            if batch_idx >= len(sampler):
                epoch, batch_idx = epoch + 1, 0
        train_s = time.perf_counter() - t_train
    finally:
        pbar.close()
        if curve is not None:
            curve.close()
        if labeler is not None:
            labeler.close()

    divergence = replica_divergence(policy, info)
    metrics_out: dict[str, Any] = {}
    if info.is_main:
        eval_model: Any = ema.model if (ema is not None and cfg.eval.use_ema) else policy
        video_dir = run_dir / "videos" if int(cfg.eval.n_videos) > 0 else None
        res = run_evaluation(eval_model, cfg, device, video_dir)
        logger.log(res.summary(), step)
        # The same final weights sampled on other grids (e.g. iMF 2-NFE), same episodes.
        by_steps = {
            int(n): run_evaluation(eval_model, cfg, device, None, num_inference_steps=int(n))
            for n in cfg.eval.get("also_inference_steps", None) or ()
        }
        for n, extra in by_steps.items():
            logger.log({f"{k}@{n}steps": v for k, v in extra.summary().items()}, step)
        obs = first_observation(
            str(cfg.task.env_obs_type),
            obs_keys(cfg),
            int(cfg.task.n_obs_steps),
            int(cfg.eval.start_seed),
            device,
        )
        eval_model.eval()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            latency = action_latency_ms(world_policy(eval_model, cfg), obs)
        metrics_out = {
            "run_name": str(cfg.run_name),
            "task": str(cfg.task.name),
            "policy": {
                "tag": str(cfg.policy.tag),
                "backbone": pcfg.backbone,
                "objective": pcfg.objective,
                "n_emb": pcfg.n_emb,
                "n_layer": pcfg.n_layer,
                "n_head": pcfg.n_head,
                "num_inference_steps": pcfg.num_inference_steps,
                "num_parameters": sum(p.numel() for p in policy.parameters()),
            },
            "seed": int(cfg.seed),
            "steps": step,
            "batch_size": int(tc.batch_size),
            "world_size": info.world_size,
            "ddp_max_param_divergence": divergence,
            "device": str(device),
            "final_loss": float(np.mean(recent)) if recent else None,
            "data_wall_s": data_s,
            "train_wall_s": train_s,
            "eval_wall_s": res.wall_s,
            "action_latency_ms_batch1": latency,
            "eval": res.to_dict(),
            # diffusion_policy's 50 standard seeds are the first 50 of a longer evaluation.
            "eval_standard": res.first(
                min(int(cfg.eval.get("standard_episodes", 50)), res.n_episodes)
            ),
            "dagger_rounds": [
                {
                    k: v
                    for k, v in r.to_dict().items()
                    if k not in ("seeds", "success", "max_coverage")
                }
                for r in dagger_results
                if r is not None
            ],
            "eval_by_inference_steps": {
                str(n): {**extra.summary(), "ms_per_policy_call": extra.ms_per_policy_call}
                for n, extra in by_steps.items()
            },
        }
        atomic_write_text(run_dir / METRICS_FILE, json.dumps(metrics_out, indent=2))
        logger.close()
    barrier(info)
    return metrics_out
