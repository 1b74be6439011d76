"""Per-layer activation checkpointing applied from outside the model (torchtitan style).

Each matching submodule's forward becomes one `torch.utils.checkpoint.checkpoint(...,
use_reentrant=False)` unit while the module is in training mode and autograd is recording, so a
step runs every layer body exactly twice (forward + one recompute). There is exactly one
granularity: a matching module nested inside an already-wrapped one is left alone (lerobot nests
checkpoints and recomputes every layer twice more; lerobot `src/lerobot/policies/pi0/modeling_pi0.py`).
`use_reentrant=False` keeps the RNG state (dropout) identical on recompute and works with DDP,
FSDP hooks and keyword / non-tensor arguments.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "apply_activation_checkpointing",
    "has_activation_checkpointing",
    "is_activation_checkpointed",
    "remove_activation_checkpointing",
]

_FLAG = "_vla_core_activation_checkpointed"


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """Bound to a module instance; runs the class's own forward inside one checkpoint unit."""
    body = type(self).forward.__get__(self)
    if self.training and torch.is_grad_enabled():
        return checkpoint(body, *args, use_reentrant=False, **kwargs)
    return body(*args, **kwargs)


def apply_activation_checkpointing(module: nn.Module, layer_types: tuple[type, ...]) -> int:
    """Wrap the forward of every submodule of `module` (itself included) that is an instance of
    `layer_types`, outermost first; returns how many were newly wrapped. Idempotent. Parameter
    names are unchanged (the forward is rebound on the instance, no wrapper module is inserted),
    and `copy.deepcopy` rebinds it to the copy."""
    if not layer_types:
        raise ValueError("apply_activation_checkpointing needs at least one layer type")
    wrapped = 0
    taken: list[str] = []
    for name, sub in module.named_modules():
        if any(prefix == "" or name.startswith(prefix + ".") for prefix in taken):
            continue  # inside an already-checkpointed unit: one granularity only
        if not isinstance(sub, layer_types) or not isinstance(sub, nn.Module):
            continue
        taken.append(name)
        if is_activation_checkpointed(sub):
            continue
        sub.forward = types.MethodType(_checkpointed_forward, sub)  # type: ignore[method-assign]
        setattr(sub, _FLAG, True)
        wrapped += 1
    return wrapped


def is_activation_checkpointed(module: nn.Module) -> bool:
    return bool(module.__dict__.get(_FLAG, False))


def has_activation_checkpointing(module: nn.Module) -> bool:
    """True when `module` or any submodule runs as a checkpoint unit (ask the tree, not a flag)."""
    return any(is_activation_checkpointed(sub) for sub in module.modules())


def remove_activation_checkpointing(module: nn.Module) -> int:
    """Undo `apply_activation_checkpointing` on every wrapped submodule; returns how many."""
    removed = 0
    for sub in module.modules():
        if is_activation_checkpointed(sub):
            del sub.forward
            delattr(sub, _FLAG)
            removed += 1
    return removed
