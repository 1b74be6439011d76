"""Plumbing of `gpu_suite.py`: a recorder that prints progress and rewrites the JSON after every
row (so a killed run still leaves its results), per-section time budgets, the timing / memory
probes, and the table of peak bf16 tensor-core TFLOP/s used for FLOP utilisation."""

from __future__ import annotations

import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vla_train.atomic import atomic_write_text

# Dense (no sparsity) bf16 tensor-core peaks with fp32 accumulation, TFLOP/s, from the vendors'
# datasheets. Matched against torch.cuda.get_device_name() lower-cased, first match wins (so the
# specific names come before the generic ones); anything else is "unknown".
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756.0),
    ("h100 nvl", 835.0),
    ("h100", 989.4),  # SXM
    ("h200", 989.4),
    ("gh200", 989.4),
    ("b200", 2250.0),
    ("a100", 312.0),
    ("l40s", 362.0),
    ("l4", 121.0),
    ("rtx 4090", 165.2),
    ("rtx 5090", 209.5),
)


def peak_bf16_tflops(device_name: str) -> float | None:
    """The table's peak for `device_name`, or None ('unknown')."""
    name = device_name.lower()
    for key, peak in PEAK_BF16_TFLOPS:
        if key in name:
            return peak
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_s(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """(result, wall seconds) of one call, synchronised on CUDA."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def median_ms(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall milliseconds per call after `warmup` calls (CUDA events-free: synchronised)."""
    for _ in range(warmup):
        fn()
    return 1e3 * statistics.median(timed_s(fn, device)[1] for _ in range(repeats))


def reset_peak(device: torch.device) -> int:
    """Reset the CUDA peak counter; returns the bytes allocated now (0 on CPU)."""
    if device.type != "cuda":
        return 0
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_bytes(device: torch.device) -> int | None:
    """CUDA allocator peak since `reset_peak` (None on CPU, where it is not measured)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def free_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Recorder:
    """Rows keyed `section/name`, each with a status ('ok' | 'error' | 'skipped'), written to
    `out` (atomically) after every row, with the sections' budgets and elapsed times."""

    def __init__(self, out: Path, meta: dict[str, Any], total_budget_s: float) -> None:
        self.out = out
        self.payload: dict[str, Any] = {"meta": meta, "sections": {}, "rows": {}}
        self.start = time.perf_counter()
        self.total_budget_s = total_budget_s
        self.section = ""
        self.section_start = self.start
        self.section_budget_s = 0.0
        self.write()

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.start

    def begin(self, section: str, budget_s: float) -> None:
        self.section, self.section_start, self.section_budget_s = (
            section,
            time.perf_counter(),
            budget_s,
        )
        self.payload["sections"][section] = {"budget_s": budget_s, "elapsed_s": 0.0}
        self.log(f"== {section} (budget {budget_s:.0f} s, total elapsed {self.elapsed_s():.0f} s)")

    def over_budget(self) -> str | None:
        """Why the next row must be skipped, or None."""
        if time.perf_counter() - self.section_start > self.section_budget_s:
            return f"section budget {self.section_budget_s:.0f} s spent"
        if self.elapsed_s() > self.total_budget_s:
            return f"total budget {self.total_budget_s:.0f} s spent"
        return None

    def log(self, message: str) -> None:
        print(f"[{self.elapsed_s():7.1f} s] {message}", file=sys.stderr, flush=True)

    def row(self, name: str, fn: Callable[[], dict[str, Any]], skip: str | None = None) -> dict:
        """Run `fn` (unless skipped or over budget) and record its dict as row `section/name`."""
        key = f"{self.section}/{name}"
        reason = skip or self.over_budget()
        if reason is not None:
            result: dict[str, Any] = {"status": "skipped", "reason": reason}
        else:
            self.log(f"{key} ...")
            try:
                result = {"status": "ok", **fn()}
            except Exception as error:  # a failing row must not lose the others
                traceback.print_exc(file=sys.stderr)
                result = {"status": "error", "error": f"{type(error).__name__}: {error}"[:500]}
        self.payload["rows"][key] = result
        section = self.payload["sections"][self.section]
        section["elapsed_s"] = round(time.perf_counter() - self.section_start, 2)
        self.log(f"{key}: {_short(result)}")
        self.write()
        return result

    def write(self) -> None:
        self.payload["meta"]["elapsed_s"] = round(self.elapsed_s(), 2)
        atomic_write_text(self.out, json.dumps(self.payload, indent=2, default=str))


def _short(result: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()
    )[:300]


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def markdown_report(payload: dict[str, Any]) -> str:
    """One markdown table of every row (time, first call, ratios, TFLOP/s, utilisation, memory)."""
    meta = payload["meta"]
    peak = meta.get("peak_bf16_tflops")
    lines = [
        f"GPU suite on {meta['device']} (peak bf16 {peak if peak else 'unknown'} TFLOP/s), "
        f"torch {meta['torch']}, dtype {meta['dtype']}, compile backend "
        f"{meta['compile_backend']}{', TINY SMOKE RUN (not performance)' if meta['tiny'] else ''}",
        "",
        "| row | status | ms | first call s | speed-up | TFLOP/s | utilisation | samples/s "
        "| peak GiB | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key, row in payload["rows"].items():
        ms = row.get("latency_ms", row.get("step_ms"))
        speedup = row.get("speedup_vs_compiled", row.get("speedup_vs_eager"))
        speedup_label = (
            " (vs compiled)"
            if "speedup_vs_compiled" in row
            else (" (vs eager)" if "speedup_vs_eager" in row else "")
        )
        note = row.get("reason") or row.get("error") or ""
        if row.get("max_abs_diff_vs_eager") is not None:
            note = f"max abs Δ vs eager {row['max_abs_diff_vs_eager']:.2e}"
        speedup_text = f"{_fmt(speedup, '.2f')}{speedup_label}" if speedup is not None else ""
        lines.append(
            f"| {key} | {row['status']} | {_fmt(ms, '.2f')} | {_fmt(row.get('first_call_s'), '.1f')} "
            f"| {speedup_text} | {_fmt(row.get('tflops_per_s'), '.1f')} "
            f"| {_fmt(row.get('utilisation'), '.1%')} | {_fmt(row.get('samples_per_s'), '.1f')} "
            f"| {_fmt(row.get('peak_gib'), '.1f')} | {note} |"
        )
    return "\n".join(lines) + "\n"
