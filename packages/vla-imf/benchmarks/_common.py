"""Plumbing shared by the vla-imf benchmarks: the PushT low-dim policy they time, round-robin
timing (machine load hits every variant alike) and the atomic JSON result file."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from vla_imf import IMFPolicy, IMFPolicyConfig
from vla_imf._testing import pusht_stats

K = TypeVar("K", bound=Hashable)


def pusht_policy(**fields: Any) -> IMFPolicy:
    """An `IMFPolicy` on PushT's low-dim keys (state + T keypoints), normaliser fitted to PushT
    ranges; `fields` are any other fields in `IMFPolicyConfig.from_flat`'s flat form
    (`backbone=<kind>`, `n_emb=...` beside the policy's fields)."""
    cfg = IMFPolicyConfig.from_flat(
        {
            "lowdim_keys": ("observation.state", "observation.environment_state"),
            "n_kv_head": 1,
            **fields,
        }
    )
    policy = IMFPolicy(cfg)
    policy.fit_normalizer(pusht_stats(cfg))
    return policy


def round_robin_median_s(
    calls: Mapping[K, Callable[[], object]], warmup: int, repeats: int
) -> dict[K, float]:
    """Median wall seconds per call of each callable, interleaving them repeat by repeat."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[K, list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}


def write_result(out: Path, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """`{"args", "rows"}` JSON to `out`, via a temp file and rename."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2)
    )
    tmp.replace(out)
    print(f"wrote {out}")
