"""openpi-style normalisation statistics for pi0 / pi0.5 serving (`norm_stats.json`).

File format (openpi's `assets/<robot>/norm_stats.json`): `{"norm_stats": {"state": {"mean", "std",
"q01", "q99"}, "actions": {...}}}`. pi0 uses z-scores `(x − mean) / (std + 1e-6)`, pi0.5 quantiles
`2·(x − q01) / (q99 − q01 + 1e-6) − 1` (openpi's `use_quantile_norm`). Statistics may cover fewer
dimensions than the model's padded state / action width: the rest is zero-padded on the way in and
dropped on the way out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EPS = 1e-6


@dataclass(frozen=True)
class FeatureStats:
    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray
    q99: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])


@dataclass(frozen=True)
class NormStats:
    state: FeatureStats
    actions: FeatureStats
    quantile: bool

    def normalize_state(self, state: np.ndarray, width: int) -> np.ndarray:  # [B, n] -> [B, width]
        return _pad(_forward(state, self.state, self.quantile), width)

    def normalize_actions(self, actions: np.ndarray, width: int) -> np.ndarray:  # [..., n]
        return _pad(_forward(actions, self.actions, self.quantile), width)

    def unnormalize_actions(self, actions: np.ndarray) -> np.ndarray:  # [..., width] -> [..., n]
        stats = self.actions
        y = actions[..., : stats.dim]
        if self.quantile:
            return (y + 1.0) / 2.0 * (stats.q99 - stats.q01 + EPS) + stats.q01
        return y * (stats.std + EPS) + stats.mean


def _forward(x: np.ndarray, stats: FeatureStats, quantile: bool) -> np.ndarray:
    if quantile:
        return 2.0 * (x - stats.q01) / (stats.q99 - stats.q01 + EPS) - 1.0
    return (x - stats.mean) / (stats.std + EPS)


def _pad(x: np.ndarray, width: int) -> np.ndarray:
    if x.shape[-1] > width:
        raise ValueError(f"statistics have {x.shape[-1]} dims, the model only {width}")
    pad = [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])]
    return np.pad(x, pad).astype(np.float32)


def _feature(path: Path, name: str, entry: object) -> FeatureStats:
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: norm_stats[{name!r}] must be a map")
    fields = {}
    for key in ("mean", "std", "q01", "q99"):
        if key not in entry:
            raise KeyError(f"{path}: norm_stats[{name!r}] has no {key!r}")
        fields[key] = np.asarray(entry[key], dtype=np.float32).reshape(-1)
    dims = {v.shape[0] for v in fields.values()}
    if len(dims) != 1:
        raise ValueError(f"{path}: norm_stats[{name!r}] fields have different lengths {dims}")
    return FeatureStats(**fields)


def load_norm_stats(path: str | Path, *, quantile: bool) -> NormStats:
    path = Path(path)
    payload = json.loads(path.read_text())
    stats = payload.get("norm_stats", payload)
    for name in ("state", "actions"):
        if name not in stats:
            raise KeyError(f"{path}: norm_stats has no {name!r} entry; got {sorted(stats)}")
    return NormStats(
        _feature(path, "state", stats["state"]),
        _feature(path, "actions", stats["actions"]),
        quantile,
    )
