"""The VLA fine-tuning loop: one entry point for 1 process, DDP and FSDP2 (`torchrun`).

Determinism is by construction, so that resume and N-process runs reproduce a 1-process run:
- the global batch of step k is a fixed slice of a permutation seeded by (seed, epoch); rank r
  takes its contiguous `batch_size / world_size` part;
- flow-matching noise and time for the *global* batch come from a generator seeded by
  (seed, step) and each rank slices its rows;
- the loss is `Σ mask·(v − u)² / (b · H · action_dim)` (a fixed denominator, lerobot's masked
  mean), so the mean of the rank losses equals the 1-process loss and DDP / FSDP2 gradient
  averaging gives the 1-process gradient;
- the learning rate is a pure function of the step (warmup + cosine), nothing to restore.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from vla_core import PI0Model
from vla_prune import ImageTokenPruner
from vla_train.trainer.distributed import DistInfo, init_distributed, shutdown
from vla_train.vla.data import VLADataConfig, VLADataset, collate
from vla_train.vla.parallel import (
    STRATEGIES,
    export_policy,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    wrap_model,
)
from vla_train.vla.policy import (
    PolicyConfig,
    build_policy,
    optimizer_param_groups,
    trainable_parameter_count,
)
from vla_train.vla.tokenizer import load_tokenizer

__all__ = [
    "FinetuneConfig",
    "OptimConfig",
    "finetune",
    "finetune_local_processes",
    "global_batch_indices",
    "learning_rate",
]

log = logging.getLogger("vla_train.vla")


@dataclass(frozen=True)
class OptimConfig:
    max_steps: int = 30_000
    batch_size: int = 32  # global, split evenly across ranks
    learning_rate: float = 2.5e-5  # openpi fine-tuning peak
    warmup_steps: int = 1_000
    min_lr_ratio: float = 0.1
    weight_decay: float = 1e-10
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip_norm: float = 1.0

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.batch_size < 1:
            raise ValueError(
                f"OptimConfig: max_steps ({self.max_steps}) and batch_size ({self.batch_size}) "
                "must be >= 1"
            )
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("OptimConfig: warmup_steps >= 0 and 0 <= min_lr_ratio <= 1")


@dataclass(frozen=True)
class FinetuneConfig:
    policy: PolicyConfig
    data: VLADataConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    tokenizer: str | None = None  # None = the offline TinyTokenizer
    strategy: str = "none"  # none | ddp | fsdp2
    fsdp_mixed_bf16: bool = False
    device: str = "auto"
    seed: int = 0
    checkpoint_every: int = 0  # 0 = only at the end
    export: bool = True
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"FinetuneConfig.strategy must be one of {STRATEGIES}, got {self.strategy!r}"
            )
        if self.checkpoint_every < 0:
            raise ValueError(
                f"FinetuneConfig.checkpoint_every must be >= 0, got {self.checkpoint_every}"
            )


def learning_rate(optim: OptimConfig, step: int) -> float:
    """Linear warmup to the peak, cosine decay to `min_lr_ratio · peak` at `max_steps`."""
    peak = optim.learning_rate
    if step < optim.warmup_steps:
        return peak * (step + 1) / (optim.warmup_steps + 1)
    span = max(optim.max_steps - optim.warmup_steps, 1)
    progress = min((step - optim.warmup_steps) / span, 1.0)
    floor = peak * optim.min_lr_ratio
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def global_batch_indices(num_samples: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Dataset indices of step `step`'s global batch (epochs of seeded permutations, tail dropped)."""
    per_epoch = num_samples // batch_size
    if per_epoch < 1:
        raise ValueError(
            f"dataset has {num_samples} samples, fewer than the batch size {batch_size}"
        )
    epoch, slot = divmod(step, per_epoch)
    order = torch.randperm(
        num_samples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)
    )
    return order[slot * batch_size : (slot + 1) * batch_size].tolist()


def _flow_inputs(model: PI0Model, batch_size: int, step: int, seed: int) -> tuple[Tensor, Tensor]:
    """Noise [B, H, P] and time [B] of the global batch, identical on every rank: the model's own
    samplers under a CPU RNG forked and seeded by (seed, step)."""
    config = model.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + step + 1)
        noise = torch.randn(batch_size, config.action_horizon, config.action_dim)
        time = model.sample_time(batch_size)
    return noise, time


def _pruner(model: PI0Model) -> ImageTokenPruner | None:
    token_filter = model.image_token_filter
    return token_filter if isinstance(token_filter, ImageTokenPruner) else None


def finetune(
    config: FinetuneConfig, run_dir: str | Path, *, resume: bool = False
) -> dict[str, Any]:
    """Train `config.optim.max_steps` steps; returns (rank 0) the per-step global losses, the
    pruner noise scales, timing and the export directory. Also writes `metrics.json`."""
    run_dir = Path(run_dir)
    info: DistInfo = init_distributed(config.device)
    try:
        return _finetune(config, run_dir, info, resume)
    finally:
        shutdown(info)


def _finetune(
    config: FinetuneConfig, run_dir: Path, info: DistInfo, resume: bool
) -> dict[str, Any]:
    optim_cfg = config.optim
    if optim_cfg.batch_size % info.world_size:
        raise ValueError(
            f"global batch_size {optim_cfg.batch_size} is not divisible by world size {info.world_size}"
        )
    local_batch = optim_cfg.batch_size // info.world_size
    if info.enabled and config.strategy == "none":
        raise ValueError("running under torchrun with strategy='none'; choose 'ddp' or 'fsdp2'")
    model = build_policy(config.policy, device=info.device, seed=config.seed)
    model_config = model.config
    tokenizer = load_tokenizer(config.tokenizer)
    if tokenizer.vocab_size > model_config.backbone.vocab_size:
        raise ValueError(
            f"tokenizer vocab {tokenizer.vocab_size} exceeds the backbone's {model_config.backbone.vocab_size}"
        )
    dataset = VLADataset(
        config.data,
        tokenizer=tokenizer,
        image_size=model_config.vision.image_size,
        action_horizon=model_config.action_horizon,
        pad_dim=model_config.action_dim,
        max_token_len=model_config.max_token_len or 48,
        variant=model_config.variant,
    )
    if len(dataset.camera_keys) != model_config.num_cameras:
        raise ValueError(
            f"dataset has cameras {dataset.camera_keys}, the model expects {model_config.num_cameras}"
        )
    pruner = _pruner(model)
    noise_schedule = config.policy.pruning.schedule_for(optim_cfg.max_steps)
    wrapped = wrap_model(
        model, config.strategy, device=info.device, mixed_bf16=config.fsdp_mixed_bf16
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        optimizer_param_groups(model),
        lr=optim_cfg.learning_rate,
        betas=optim_cfg.betas,
        weight_decay=optim_cfg.weight_decay,
    )
    ckpt_root = run_dir / "checkpoints"
    start = 0
    if resume and (found := latest_checkpoint(ckpt_root)) is not None:
        start = int(load_checkpoint(found[1], wrapped, optimizer)["step"])
        if info.is_main:
            log.info("resumed from %s (step %d)", found[1], start)
    trainable, total = trainable_parameter_count(model)
    losses: list[float] = []
    noise_scales: list[float | None] = []
    action_dim = dataset.action_dim
    wrapped.train()
    t0 = time.perf_counter()
    for step in range(start, optim_cfg.max_steps):
        lr = learning_rate(optim_cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if pruner is not None:
            scale = noise_schedule(step)
            pruner.set_noise_scale(scale)
            noise_scales.append(scale)
        indices = global_batch_indices(len(dataset), optim_cfg.batch_size, step, config.seed)
        rows = slice(info.rank * local_batch, (info.rank + 1) * local_batch)
        batch = collate([dataset[i] for i in indices[rows]]).to(info.device)
        noise, flow_time = _flow_inputs(model, optim_cfg.batch_size, step, config.seed)
        torch.manual_seed(config.seed * 7_919 + step)  # the pruner's training noise
        per_element = wrapped(
            batch.observation,
            batch.actions,
            noise[rows].to(info.device),
            flow_time[rows].to(info.device),
        )  # [b, H, P]
        horizon = model_config.action_horizon
        loss = (per_element * batch.action_mask).sum() / (local_batch * horizon * action_dim)
        loss.backward()
        if optim_cfg.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, optim_cfg.grad_clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        reported = loss.detach().float()
        if info.enabled:
            dist.all_reduce(reported)
            reported /= info.world_size
        losses.append(float(reported))
        done = step + 1
        if info.is_main and config.log_every and done % config.log_every == 0:
            log.info("step %d loss %.5f lr %.2e", done, losses[-1], lr)
        if (
            config.checkpoint_every and done % config.checkpoint_every == 0
        ) or done == optim_cfg.max_steps:
            save_checkpoint(ckpt_root, done, wrapped, optimizer, {"loss": losses[-1]})
    train_wall = time.perf_counter() - t0
    export_dir = None
    if config.export:
        export_dir = export_policy(wrapped, run_dir / "export")
    metrics: dict[str, Any] = {
        "start_step": start,
        "steps": optim_cfg.max_steps,
        "losses": losses,
        "noise_scales": noise_scales,
        "train_wall_s": train_wall,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "world_size": info.world_size,
        "strategy": config.strategy,
        "export_dir": None if export_dir is None else str(export_dir),
    }
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / "metrics.json.tmp"
        tmp.write_text(json.dumps(metrics, indent=2))
        tmp.replace(run_dir / "metrics.json")
    return metrics


def _spawned_worker(
    rank: int, world_size: int, port: int, config: FinetuneConfig, run_dir: str, out: str
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    metrics = finetune(config, run_dir)
    if rank == 0:
        Path(out).write_text(json.dumps(metrics))


def finetune_local_processes(
    config: FinetuneConfig, run_dir: str | Path, nprocs: int = 2, start_method: str = "spawn"
) -> dict[str, Any]:
    """`torchrun --nproc_per_node=nprocs` without torchrun: spawn local processes (gloo on CPU)
    that join one process group and run `finetune`; returns rank 0's metrics."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "rank0_metrics.json"
    # spawn, not fork: a child forked from a parent whose OpenMP / gloo threads are running can
    # deadlock on a lock held by a thread that does not exist in the child (seen in CI).
    mp.start_processes(
        _spawned_worker,
        args=(nprocs, port, config, str(run_dir), str(out)),
        nprocs=nprocs,
        start_method=start_method,
    )
    return json.loads(out.read_text())
