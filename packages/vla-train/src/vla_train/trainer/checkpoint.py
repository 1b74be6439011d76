"""Atomic training checkpoints: safetensors weights + JSON config + optimizer/scheduler/EMA/RNG.

Layout of `<run_dir>/checkpoints/step_0001000/`:
  model.safetensors   policy weights (incl. the fitted normaliser buffers)
  ema.safetensors     EMA weights (when EMA is on)
  config.json         the policy dataclass + the resolved Hydra config
  train_state.pt      optimizer, scheduler, EMA counter, per-rank RNG states (`rng_state()`),
                      step/epoch/batch position
                      (plain tensors and containers: loads with `torch.load(weights_only=True)`)
A checkpoint is written into a temporary directory and renamed into place, then `latest` (a text
file naming it) is replaced atomically, so a crash never leaves a half-written "latest".
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

LATEST = "latest"


@dataclass(frozen=True)
class Position:
    """Where training stands: `step` optimizer steps done; next batch is (epoch, batch)."""

    step: int
    epoch: int
    batch: int
    dagger_round: int = 0  # expert-in-the-loop rounds whose data training now includes


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    return run_dir / "checkpoints"


def save_checkpoint(
    run_dir: Path,
    *,
    position: Position,
    model: nn.Module,
    ema_model: nn.Module | None,
    config: dict[str, Any],
    train_state: dict[str, Any],
    keep_last: int = 2,
    name: str | None = None,
) -> Path:
    """Write one checkpoint atomically and point `latest` at it; prune to `keep_last` step dirs."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = name or f"step_{position.step:07d}"
    final = root / name
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    try:
        save_model(model, str(tmp / "model.safetensors"))
        if ema_model is not None:
            save_model(ema_model, str(tmp / "ema.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        state = dict(train_state)
        state["position"] = {
            "step": position.step,
            "epoch": position.epoch,
            "batch": position.batch,
            "dagger_round": position.dagger_round,
        }
        torch.save(state, tmp / "train_state.pt")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / LATEST, name)
    if keep_last > 0:
        steps = sorted(p for p in root.glob("step_*") if p.is_dir())
        for old in steps[:-keep_last]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = checkpoint_dir(run_dir)
    pointer = root / LATEST
    if pointer.is_file():
        path = root / pointer.read_text().strip()
        if (path / "train_state.pt").is_file():
            return path
    steps = sorted(p for p in root.glob("step_*") if (p / "train_state.pt").is_file())
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
    return torch.load(path / "train_state.pt", map_location="cpu", weights_only=True)
