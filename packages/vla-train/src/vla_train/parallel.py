"""`parallelize`: training-time choices applied to a model from outside, after torchtitan's
`parallelize_llama` (torchtitan/models/llama3/infra/parallelize.py): activation checkpointing per
block, FSDP2 `fully_shard` per block then the root, the recipe's loss wrapper, DDP, torch.compile.
Model configs never carry these knobs; exported weights are the plain model's."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from vla_core import apply_activation_checkpointing
from vla_train.config import ParallelConfig

__all__ = ["parallelize", "resolve_strategy"]


def resolve_strategy(strategy: str, world_size: int) -> str:
    """`auto` -> `ddp` under torchrun (world_size > 1), else `none`; checks the choice fits."""
    if strategy == "auto":
        return "ddp" if world_size > 1 else "none"
    if strategy == "none" and world_size > 1:
        raise ValueError(
            f"parallel.strategy=none with {world_size} processes: choose ddp, fsdp2 or auto"
        )
    if strategy in ("ddp", "fsdp2") and not dist.is_initialized():
        raise RuntimeError(
            f"parallel.strategy={strategy} needs an initialised process group (torchrun)"
        )
    return strategy


def parallelize(
    model: nn.Module,
    config: ParallelConfig,
    *,
    blocks: tuple[type[nn.Module], ...],
    loss_module: Callable[[nn.Module], nn.Module],
    device: torch.device,
    world_size: int,
    compile: bool = False,
) -> nn.Module:
    """Return the module the loop calls with a batch (its forward returns the loss).

    `model` is changed in place (checkpointed forwards, FSDP2 classes: parameter names are
    unchanged); `blocks` are the units of checkpointing and sharding (e.g. one transformer
    layer); `loss_module(model)` wraps the model so a batch goes in and a scalar loss comes out,
    which is what DDP's gradient hooks must see."""
    strategy = resolve_strategy(config.strategy, world_size)
    if config.activation_checkpointing:
        if not blocks:
            raise ValueError("parallel.activation_checkpointing=true: this recipe has no blocks")
        apply_activation_checkpointing(model, blocks)
    if strategy == "fsdp2":
        mp = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if config.mixed_bf16
            else MixedPrecisionPolicy()
        )
        for sub in [m for m in model.modules() if isinstance(m, blocks)]:
            fully_shard(sub, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
    module = loss_module(model)
    if strategy == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        module = DistributedDataParallel(module, device_ids=ids)
    if compile:  # static shapes: every batch has the same size
        module = torch.compile(module, dynamic=False)  # type: ignore[assignment]
    return module
