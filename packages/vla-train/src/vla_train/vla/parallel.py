"""Data-parallel wrapping (DDP, FSDP2), distributed checkpoints and single-file export.

FSDP2 follows torchtitan: `fully_shard` every `JointDecoderLayer` (backbone + expert stream of one
depth, so a layer's parameters are all-gathered together, also on checkpoint recompute), then the
root for the embeddings / vision tower / projections. Checkpoints use torch.distributed.checkpoint
(each rank writes its shards; the same call works for DDP, FSDP2 and a single process); export
gathers a full state dict, folds LoRA into the base weights and writes vla-core's safetensors +
config.json, which `vla_core.load_pretrained` reads for `sample_actions`.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from vla_core import JointDecoderLayer, PI0Model, save_pretrained
from vla_train.vla.lora import merge_lora

__all__ = [
    "STRATEGIES",
    "export_policy",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "unwrap",
    "wrap_model",
]

STRATEGIES = ("none", "ddp", "fsdp2")
Strategy = Literal["none", "ddp", "fsdp2"]


def wrap_model(
    model: PI0Model, strategy: str, *, device: torch.device, mixed_bf16: bool = False
) -> nn.Module:
    """`none`: the model itself; `ddp`: DistributedDataParallel; `fsdp2`: `fully_shard` per joint
    layer, then the root (in place: the model's classes become FSDP variants, names unchanged).
    `mixed_bf16` (FSDP2 only): fp32 master weights, bf16 compute, fp32 gradient reduction."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "none":
        return model
    if not dist.is_initialized():
        raise RuntimeError(f"strategy={strategy!r} needs an initialised process group (torchrun)")
    if strategy == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if mixed_bf16
        else MixedPrecisionPolicy()
    )
    for layer in model.engine.layers:
        assert isinstance(layer, JointDecoderLayer)
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def unwrap(model: nn.Module) -> PI0Model:
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    if not isinstance(inner, PI0Model):
        raise TypeError(f"expected a PI0Model (possibly DDP-wrapped), got {type(inner).__name__}")
    return inner


def _step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def latest_checkpoint(root: str | os.PathLike[str]) -> tuple[int, Path] | None:
    """Newest complete checkpoint (one whose `meta.json` was written last) under `root`."""
    root = Path(root)
    done = sorted(p for p in root.glob("step_*") if (p / "meta.json").is_file())
    if not done:
        return None
    return int(done[-1].name.split("_")[1]), done[-1]


def save_checkpoint(
    root: str | os.PathLike[str],
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Sharded model + optimizer state via DCP; `meta.json` (rank 0, written last, atomically)
    marks the checkpoint complete."""
    path = _step_dir(Path(root), step)
    model_state, optim_state = get_state_dict(unwrap_for_state(model), optimizer)
    dcp.save(
        {"model": model_state, "optim": optim_state},
        checkpoint_id=str(path),
        no_dist=not dist.is_initialized(),
    )
    if not dist.is_initialized() or dist.get_rank() == 0:
        tmp = path / "meta.json.tmp"
        tmp.write_text(json.dumps({"step": step, **(extra or {})}, indent=2))
        os.replace(tmp, path / "meta.json")
    if dist.is_initialized():
        dist.barrier()
    return path


def load_checkpoint(
    path: str | os.PathLike[str], model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore model + optimizer in place (any strategy: DCP reshards); returns `meta.json`."""
    path = Path(path)
    module = unwrap_for_state(model)
    model_state, optim_state = get_state_dict(module, optimizer)
    state: dict[str, Any] = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
    set_state_dict(
        module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )
    return json.loads((path / "meta.json").read_text())


def unwrap_for_state(model: nn.Module) -> nn.Module:
    """DDP's wrapper is transparent to DCP's state-dict helpers only through `.module`."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def export_policy(model: nn.Module, directory: str | os.PathLike[str]) -> Path | None:
    """Gather the full state dict (all ranks must call), then on rank 0 rebuild an unsharded copy,
    merge LoRA, drop the pruner (a parameter-free training-time choice, re-attached at load) and
    write `model.safetensors` + `config.json`. Returns the directory on rank 0, else None."""
    module = unwrap_for_state(model)
    full = get_model_state_dict(
        module, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if dist.is_initialized() and dist.get_rank() != 0:
        dist.barrier()
        return None
    plain = _plain_copy(unwrap(module))
    plain.load_state_dict(full, strict=True)
    merge_lora(plain)
    plain.set_image_token_filter(None)
    out = save_pretrained(plain, directory)
    if dist.is_initialized():
        dist.barrier()
    return out


def _plain_copy(model: PI0Model) -> PI0Model:
    """A CPU PI0Model with the same module tree (LoRA adapters and filter included) as `model`
    but ordinary (non-FSDP) classes; weights uninitialised (the strict load overwrites them)."""
    from transformers.initialization import no_init_weights

    from vla_train.vla.lora import LoRALinear

    with torch.device("cpu"), no_init_weights():
        skeleton = PI0Model(model.config)
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            parent_name, _, child = name.rpartition(".")
            parent = skeleton.get_submodule(parent_name) if parent_name else skeleton
            base = getattr(parent, child)
            setattr(parent, child, LoRALinear(base, module.lora_a.shape[0], module.scaling))
    if model.image_token_filter is not None:
        skeleton.set_image_token_filter(copy.deepcopy(model.image_token_filter))
    return skeleton
