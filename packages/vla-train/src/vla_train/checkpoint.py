"""Atomic training checkpoints in one layout for every recipe, `<run_dir>/checkpoints/`:

  step_0001000/   one checkpoint, renamed into place only once complete
    model.safetensors, ema.safetensors   small models (`sharded=False`): full weights
    __*.distcp, .metadata                sharded models (`sharded=True`): torch.distributed.checkpoint
                                         shards of model (+ EMA) and optimizer, written by every rank
    config.json                          the run's config (model dataclass + resolved Hydra config)
    train_state.pt                       step, per-rank RNG states, recipe position, loop counters
                                         (+ optimizer state when not sharded); written last
  latest          a text file naming the newest complete checkpoint, replaced atomically

Everything in train_state.pt is plain tensors and containers: `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_model, save_model
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from vla_train.atomic import atomic_dir, atomic_write_text

LATEST = "latest"
TRAIN_STATE = "train_state.pt"

__all__ = [
    "checkpoint_dir",
    "latest_checkpoint",
    "load_checkpoint",
    "load_train_state",
    "load_weights",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
]


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU + CUDA) RNG states as weights_only-loadable objects."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _dcp_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, ema_model: nn.Module | None
) -> dict[str, Any]:
    model_state, optim_state = get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": model_state, "optim": optim_state}
    if ema_model is not None:
        state["ema"] = ema_model.state_dict()
    return state


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema_model: nn.Module | None,
    config: dict[str, Any],
    train_state: dict[str, Any],
    keep_last: int = 2,
    sharded: bool = False,
) -> Path:
    """Write checkpoint `step` atomically (every rank calls; rank 0 writes the unsharded files) and
    point `latest` at it; keep the newest `keep_last` step folders (0 = all)."""
    root = checkpoint_dir(run_dir)
    name = f"step_{step:07d}"
    final = root / name
    state = {**train_state, "step": step}
    if sharded:
        staging = root / f".{name}.partial"  # one shared folder: every rank writes its shards
        if _is_main():
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        _barrier()
        dcp.save(
            _dcp_state(model, optimizer, ema_model),
            checkpoint_id=str(staging),
            no_dist=not dist.is_initialized(),
        )
        _barrier()
        if _is_main():
            (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
            torch.save(state, staging / TRAIN_STATE)
            shutil.rmtree(final, ignore_errors=True)
            staging.replace(final)
    elif _is_main():
        with atomic_dir(final) as tmp:
            save_model(model, str(tmp / "model.safetensors"))
            if ema_model is not None:
                save_model(ema_model, str(tmp / "ema.safetensors"))
            (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
            torch.save({**state, "optimizer": optimizer.state_dict()}, tmp / TRAIN_STATE)
    if _is_main():
        atomic_write_text(root / LATEST, name)
        if keep_last > 0:
            for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep_last]:
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint `latest` names, else the newest complete `step_*` folder, else None."""
    root = checkpoint_dir(run_dir)
    pointer = root / LATEST
    if pointer.is_file():
        path = root / pointer.read_text().strip()
        if (path / TRAIN_STATE).is_file():
            return path
    steps = sorted(p for p in root.glob("step_*") if (p / TRAIN_STATE).is_file())
    return steps[-1] if steps else None


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights strictly; errors name the missing/unexpected keys."""
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}")
    missing, unexpected = load_model(model, str(path), strict=False)
    if missing or unexpected:
        raise KeyError(
            f"{path}: missing keys {sorted(missing)}, unexpected keys {sorted(unexpected)}"
        )


def load_train_state(path: Path) -> dict[str, Any]:
    return torch.load(Path(path) / TRAIN_STATE, map_location="cpu", weights_only=True)


def load_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema_model: nn.Module | None,
) -> dict[str, Any]:
    """Restore model, optimizer and EMA weights in place (either format; DCP reshards to the
    current world size); returns train_state.pt."""
    path = Path(path)
    state = load_train_state(path)
    if (path / "model.safetensors").is_file():
        load_weights(model, path / "model.safetensors")
        if ema_model is not None:
            load_weights(ema_model, path / "ema.safetensors")
        optimizer.load_state_dict(state["optimizer"])
        return state
    shards = _dcp_state(model, optimizer, ema_model)
    dcp.load(shards, checkpoint_id=str(path), no_dist=not dist.is_initialized())
    set_state_dict(
        model, optimizer, model_state_dict=shards["model"], optim_state_dict=shards["optim"]
    )
    if ema_model is not None:
        ema_model.load_state_dict(shards["ema"])
    return state
