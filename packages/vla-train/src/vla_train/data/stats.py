"""Per-episode feature statistics and their aggregate, as lerobot 0.6.1 stores them.

min / max / mean / std / count are exact (float64). The quantiles q01, q10, q50, q90, q99 follow
lerobot's `compute_stats.py` (`RunningQuantileStats` + `aggregate_feature_stats`): per episode, a
5000-bin histogram per dimension between `min - 1e-10` and `max + 1e-10` (in the data's float
precision), the quantile read off the cumulative counts with linear interpolation inside a bin;
an episode with one frame uses its mean; the dataset value is the count-weighted mean of the
episodes' quantiles (an estimate, exactly the number lerobot writes). pi0.5's QUANTILES
normalisation maps q01 / q99 to -1 / 1.

Images: per channel over all pixels, in [0, 1], shape [3, 1, 1] (lerobot samples frames and
downsamples them first, so its image statistics are estimates of the same numbers).
"""

from __future__ import annotations

import numpy as np

from vla_train.data.layout import FeatureSpec

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{round(q * 100):02d}" for q in QUANTILES)
NUM_QUANTILE_BINS = 5000
STAT_KEYS = ("min", "max", "mean", "std", "count", *QUANTILE_KEYS)


def _quantile_from_histogram(hist: np.ndarray, edges: np.ndarray, target: float) -> float:
    """The value below which `target` of the histogram's counts lie (linear inside a bin)."""
    cumulative = np.cumsum(hist)
    idx = int(np.searchsorted(cumulative, target))
    if idx == 0:
        return float(edges[0])
    if idx >= len(cumulative):
        return float(edges[-1])
    below = cumulative[idx - 1]
    in_bin = cumulative[idx] - below
    if in_bin == 0:
        return float(edges[idx])
    return float(edges[idx] + (target - below) / in_bin * (edges[idx + 1] - edges[idx]))


def histogram_quantiles(
    values: np.ndarray, weights: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Quantiles of each column of `values` [N, D] (rows weighted by `weights` [N, D] counts
    when given, e.g. pixel levels with their frequencies) -> {q01..q99: [D] float64}."""
    x = values.astype(np.result_type(values.dtype, np.float32), copy=False)
    count = float(x.shape[0] if weights is None else weights[:, 0].sum())
    out = {k: np.empty(x.shape[1], dtype=np.float64) for k in QUANTILE_KEYS}
    for d in range(x.shape[1]):
        column = x[:, d]
        w = None if weights is None else weights[:, d]
        present = column if w is None else column[w > 0]
        low, high = present.min(), present.max()
        edges = np.linspace(low - 1e-10, high + 1e-10, NUM_QUANTILE_BINS + 1)
        hist, _ = np.histogram(column, bins=edges, weights=w)
        for key, q in zip(QUANTILE_KEYS, QUANTILES):
            out[key][d] = _quantile_from_histogram(hist, edges, q * count)
    return out


def feature_stats(values: np.ndarray, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """min/max/mean/std/count and q01..q99 over the frames of one episode; images per channel in
    [0, 1] with shape [3, 1, 1] (lerobot's convention for image stats)."""
    if spec.dtype in ("image", "video"):
        # Exact and fast: a 256-bin histogram per channel instead of float copies of every pixel.
        levels = np.arange(256, dtype=np.float64) / 255.0
        hist = np.stack([np.bincount(values[..., c].ravel(), minlength=256) for c in range(3)])
        n = hist.sum(1)  # [3]
        mean = hist @ levels / n
        present = hist > 0
        stats = {
            "min": levels[present.argmax(1)],
            "max": levels[255 - present[:, ::-1].argmax(1)],
            "mean": mean,
            "std": np.sqrt(np.maximum(hist @ levels**2 / n - mean**2, 0.0)),
        }
        pixel_levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)  # [256, 3]
        quantiles = histogram_quantiles(pixel_levels, weights=hist.T.astype(np.float64))
        stats.update({k: v / 255.0 for k, v in quantiles.items()})
        stats = {k: v.reshape(3, 1, 1) for k, v in stats.items()}
    else:
        raw = values.reshape(len(values), -1)  # [T, D]
        x = raw.astype(np.float64)
        stats = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)}
        if len(values) < 2:
            stats.update({k: raw.mean(0).astype(np.float64) for k in QUANTILE_KEYS})
        else:
            stats.update(histogram_quantiles(raw))
    stats["count"] = np.array([len(values)], dtype=np.int64)
    return stats


def merge_stats(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Combine per-episode stats: min/max/mean/std exactly (parallel-variance formula on the
    counts), quantiles as lerobot does (count-weighted mean), when every part has them."""
    counts = np.array([float(p["count"][0]) for p in parts])
    total = counts.sum()
    w = counts / total
    means = np.stack([p["mean"] for p in parts])
    mean = np.tensordot(w, means, axes=1)
    second = np.tensordot(w, np.stack([p["std"] ** 2 + p["mean"] ** 2 for p in parts]), axes=1)
    merged = {
        "min": np.min(np.stack([p["min"] for p in parts]), 0),
        "max": np.max(np.stack([p["max"] for p in parts]), 0),
        "mean": mean,
        "std": np.sqrt(np.maximum(second - mean**2, 0.0)),
        "count": np.array([int(total)], dtype=np.int64),
    }
    for key in QUANTILE_KEYS:
        if all(key in p for p in parts):
            stacked = np.stack([p[key] for p in parts])
            weights = counts.reshape(-1, *([1] * (stacked.ndim - 1)))
            merged[key] = (stacked * weights).sum(0) / total
    return merged
