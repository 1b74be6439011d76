"""Shared benchmark plumbing: a reduced-width pi0 with the realistic 816-token prefix, isolated
per-case subprocesses (so peak memory is per case), timing and peak-memory probes."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from vla_core import GemmaConfig, JointEngineConfig, PI0Config, SiglipConfig

# Reduced widths, real structure: 8 query heads / 1 kv head (MQA), 3 cameras x 256 patches at 224²
# + 48 prompt tokens = 816 prefix tokens; suffix = state + 50 actions.
BACKBONE = GemmaConfig(
    width=256, depth=4, mlp_dim=1024, num_heads=8, num_kv_heads=1, head_dim=32, vocab_size=1024
)
EXPERT = GemmaConfig(
    width=128, depth=4, mlp_dim=512, num_heads=8, num_kv_heads=1, head_dim=32, vocab_size=1024
)
VISION = SiglipConfig(width=64, depth=2, mlp_dim=128, num_heads=2, patch_size=14, image_size=224)


def reduced_pi0_config(attention: str = "sdpa", variant: str = "pi0") -> PI0Config:
    engine = JointEngineConfig(
        backbone=BACKBONE,
        expert=EXPERT,
        attention_implementation=attention,
    )
    return PI0Config(
        variant=variant,
        engine=engine,
        vision=VISION,
        action_dim=32,
        state_dim=32,  # type: ignore[arg-type]
        action_horizon=50,
        max_token_len=48,
        num_cameras=3,
    )


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(fn: Callable[[], Any]) -> float:
    """Peak extra memory (MiB) while `fn` runs: CUDA allocator peak, or on CPU the rise of the
    process's peak RSS over the RSS before the call (run it first in a fresh process)."""
    if device().type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    before = _rss_bytes()
    fn()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return max(peak - before, 0) / 2**20


def median_time(fn: Callable[[], Any], warmup: int, repeats: int) -> tuple[float, float]:
    """Median (wall ms, process CPU ms) per call. CPU time is the steadier figure on a shared
    host (other processes' load inflates wall time but not this process's CPU time)."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        if device().type == "cuda":
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        if device().type == "cuda":
            torch.cuda.synchronize()
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def case_arguments(args: argparse.Namespace) -> list[str]:
    """The parent's command-line options, re-spelt for a per-case child (minus `--case`/`--out`)."""
    forwarded = []
    for name, value in vars(args).items():
        if name not in ("case", "out") and value is not None:
            forwarded += [f"--{name.replace('_', '-')}", str(value)]
    return forwarded


def run_cases(script: str, cases: list[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Run each case in a fresh interpreter (`script --case NAME`), collect its JSON line."""
    results = {}
    for case in cases:
        proc = subprocess.run(
            [sys.executable, script, "--case", case, *case_arguments(args)],
            capture_output=True,
            text=True,
            check=False,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            results[case] = {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
        else:
            results[case] = json.loads(lines[-1])
        print(f"  {case}: {results[case]}", file=sys.stderr)
    return results


def environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
    }


def write_json(path: str, payload: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)
