"""The one training loop, for every recipe (`vla_train.recipes`): process group and device,
`parallelize`, the warmup + cosine schedule, EMA, gradient clipping, bf16 autocast, atomic
checkpoints and exact resume, logging, and the recipe's between-step hook (periodic evaluation,
PushT's expert-in-the-loop rounds), then the recipe's final evaluation / export.

Exact resume: checkpoints hold the weights, optimizer, EMA, every rank's RNG states, the recipe's
data position and the step; the learning rate is a pure function of the step. After a checkpoint
is restored, the next batch, noise and learning rate are those an uninterrupted run would use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from vla_train.atomic import atomic_write_json
from vla_train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from vla_train.config import TrainConfig
from vla_train.distributed import (
    DistInfo,
    all_gather_object,
    barrier,
    init_distributed,
    shutdown,
    spawn_local,
)
from vla_train.ema import build_ema
from vla_train.loggers import RunLog
from vla_train.parallel import parallelize, resolve_strategy
from vla_train.recipes import RunSummary, make_recipe
from vla_train.schedule import cosine_with_warmup, set_learning_rate

__all__ = ["CURVE_FILE", "METRICS_FILE", "train", "train_local_processes"]

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"  # final results of a run (what `vla-train-report` collects)
CURVE_FILE = "train_log.jsonl"  # one JSON line per logged step


def train(config: TrainConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train `config.recipe` into `run_dir` (1 process, or one rank of torchrun); returns the
    metrics rank 0 writes to metrics.json."""
    info = init_distributed(config.device)
    try:
        return _train(config, Path(run_dir), info)
    finally:
        shutdown(info)


def train_local_processes(
    config: TrainConfig, run_dir: str | Path, nprocs: int = 2
) -> dict[str, Any]:
    """`torchrun --nproc_per_node=nprocs` without torchrun (gloo on CPU); rank 0's metrics."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    spawn_local(train, config, run_dir, nprocs=nprocs)
    return json.loads((run_dir / METRICS_FILE).read_text())


def _train(config: TrainConfig, run_dir: Path, info: DistInfo) -> dict[str, Any]:
    tc, device = config.train, info.device
    run_dir.mkdir(parents=True, exist_ok=True)
    if tc.num_threads:
        # Small models gain nothing from intra-op threads and lose ~24x when another process
        # competes for the cores (OpenMP spin-waits); BENCHMARKS.md has the measurements.
        torch.set_num_threads(tc.num_threads)
    recipe = make_recipe(config, run_dir, info)
    t_start = time.perf_counter()
    model = recipe.build_model()
    data_s = time.perf_counter() - t_start
    train_module = parallelize(
        model,
        config.parallel,
        blocks=recipe.blocks,
        loss_module=recipe.loss_module,
        device=device,
        world_size=info.world_size,
        compile=tc.compile,
    )
    optimizer = recipe.optimizer(model)
    base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
    params = [p for p in model.parameters() if p.requires_grad]
    ema = build_ema(model, tc.ema)
    ema_model = ema.model if ema is not None else None
    strategy = resolve_strategy(config.parallel.strategy, info.world_size)
    sharded = tc.checkpoint_format == "dcp" or (tc.checkpoint_format, strategy) == ("auto", "fsdp2")

    step, trained_s, recipe_state = 0, 0.0, None
    ckpt = latest_checkpoint(run_dir) if config.resume else None
    if config.resume and ckpt is None and info.is_main:
        log.info("resume=true but no checkpoint in %s: starting from scratch", run_dir)
    if ckpt is not None:
        state = load_checkpoint(ckpt, model=model, optimizer=optimizer, ema_model=ema_model)
        if ema is not None:
            ema.load_state_dict(state["ema"])
        if len(state["rng"]) != info.world_size:
            raise RuntimeError(
                f"checkpoint {ckpt} was written by {len(state['rng'])} processes, resuming with "
                f"{info.world_size}: data order and noise would not match"
            )
        set_rng_state(state["rng"][info.rank])
        step, recipe_state = int(state["step"]), state["recipe"]
        trained_s = float(state["loop"]["train_wall_s"])
        if info.is_main:
            log.info("resumed from %s at step %d", ckpt, step)
    else:
        seed_everything(config.seed + info.rank)  # per-rank noise stream
    start_step = step
    recipe.start(recipe_state)

    run_log = RunLog.open(
        config.logger,
        run_dir,
        config.run_name,
        config.composed,
        is_main=info.is_main,
        curve_file=CURVE_FILE,
    )
    if info.is_main:
        log.info(
            "run %s: recipe %s, world %d (%s)",
            config.run_name,
            config.recipe,
            info.world_size,
            strategy,
        )
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and tc.amp_bf16
        else contextlib.nullcontext()
    )

    def lr_factor(at: int) -> float:
        return cosine_with_warmup(
            at, warmup_steps=tc.warmup_steps, max_steps=tc.max_steps, min_ratio=tc.min_lr_ratio
        )

    t_train = time.perf_counter()

    def checkpoint(at: int) -> None:
        save_checkpoint(
            run_dir,
            at,
            model=model,
            optimizer=optimizer,
            ema_model=ema_model,
            config=recipe.checkpoint_config(),
            train_state={
                "ema": ema.state_dict() if ema is not None else {},
                "rng": all_gather_object(info, rng_state()),
                "recipe": recipe.state_dict(),
                "loop": {"train_wall_s": trained_s + time.perf_counter() - t_train},
            },
            keep_last=tc.keep_last_checkpoints,
            sharded=sharded,
        )

    pbar = tqdm(
        total=tc.max_steps,
        initial=step,
        disable=not (info.is_main and tc.progress_bar),
        desc=config.run_name,
        dynamic_ncols=True,
    )
    log_every, ckpt_every = max(1, tc.log_every_steps), tc.checkpoint_every_steps
    losses: list[float] = []
    train_module.train()
    try:
        while step < tc.max_steps:
            set_learning_rate(optimizer, base_lrs, lr_factor(step))
            batch, extras = recipe.next_batch(step)
            with amp:
                loss = train_module(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(params, tc.grad_clip_norm)
                if tc.grad_clip_norm > 0
                else None
            )
            optimizer.step()
            if ema is not None:
                ema.update(model)
            step += 1
            if step % log_every == 0 or step == tc.max_steps:
                value = loss.detach().float()
                if info.enabled:
                    dist.all_reduce(value)
                    value /= info.world_size
                losses.append(float(value))
                # The learning rate of the next step (what LambdaLR reported after stepping).
                lr = base_lrs[0] * lr_factor(step)
                metrics = {"train/loss": losses[-1], "train/lr": lr, **extras}
                if grad_norm is not None:
                    metrics["train/grad_norm"] = float(grad_norm)
                run_log.record(metrics, step)
                pbar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}", refresh=False)
            pbar.update(1)
            if (ckpt_every > 0 and step % ckpt_every == 0) or step == tc.max_steps:
                checkpoint(step)
            if step >= tc.max_steps:
                break
            event = recipe.between_steps(step, ema_model if ema_model is not None else model)
            if event is not None:
                if event.metrics:
                    run_log.record(event.metrics, step)
                if event.checkpoint:
                    checkpoint(step)
        segment_s = time.perf_counter() - t_train
    finally:
        pbar.close()
        run_log.close_curve()
        recipe.close()

    run = RunSummary(
        step=step,
        start_step=start_step,
        data_wall_s=data_s,
        train_wall_s=trained_s + segment_s,
        segment_train_wall_s=segment_s,
        losses=losses,
        ema_model=ema_model,
        log=lambda metrics: run_log.record(metrics, step),
    )
    metrics_out = recipe.finish(model, run)
    if info.is_main:
        atomic_write_json(run_dir / METRICS_FILE, metrics_out, indent=2)
        run_log.logger.close()
    barrier(info)
    return metrics_out
