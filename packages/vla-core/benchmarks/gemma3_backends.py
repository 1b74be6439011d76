"""Gemma-3 engine: eager vs sdpa vs flex (joint forward) and checkpointing off vs on (train step),
on a reduced-width Gemma-3 backbone + AdaRMS expert with a realistic VLA prefix.

Reduced widths, real structure: backbone w256 / 6 layers (5 sliding + 1 global, RoPE bases 1e4 /
1e6), mlp 1024, 8 query / 4 kv heads, head_dim 32, query_pre_attn_scalar 48; expert w128, mlp 512.
Prefix = 2 cameras x 256 image tokens + 48 prompt tokens (10 padded); suffix = 50 action tokens.
Each case runs in its own interpreter; time = fastest of `--repeats` calls; peak = tensor memory\ncreated by one call (CUDA allocator peak, or live tensor storages tracked on CPU).

    OMP_NUM_THREADS=2 uv run python packages/vla-core/benchmarks/gemma3_backends.py \
        --out /tmp/vla_core_gemma3_backends.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch
from _harness import device, environment, run_cases, write_json
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from vla_core.checkpointing import apply_activation_checkpointing
from vla_core.config import Gemma3Config, Gemma3EngineConfig, GemmaConfig
from vla_core.gemma3 import Gemma3JointEngine
from vla_core.layers import JointDecoderLayer

BACKBONE = Gemma3Config(
    width=256,
    depth=6,
    mlp_dim=1024,
    num_heads=8,
    num_kv_heads=4,
    head_dim=32,
    vocab_size=1024,
    query_pre_attn_scalar=48,
)
EXPERT = GemmaConfig(
    width=128, depth=6, mlp_dim=512, num_heads=8, num_kv_heads=4, head_dim=32, vocab_size=1024
)
PREFIX_LEN, PADDED, SUFFIX_LEN = 2 * 256 + 48, 10, 50
FORWARD_CASES = ["eager", "sdpa", "flex"]
TRAIN_CASES = ["train:sdpa:off", "train:sdpa:on", "train:eager:off", "train:eager:on"]


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages created while active (forward, backward and any
    checkpoint recompute) and their peak; storages die through `weakref.finalize`. On CPU this
    is the tensor memory a step needs, free of malloc / RSS caching effects."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._ids: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._ids.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = id(storage)
            if key in self._ids:
                continue
            nbytes = storage.nbytes()
            self._ids.add(key)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, nbytes)
        return out


def _peak_mib(fn: Callable[[], Any]) -> float:
    """Peak extra tensor memory of one call: the CUDA allocator's peak, or on CPU the peak of
    live tensor storages created during the call."""
    if device().type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    tracker = _LiveTensorBytes()
    with tracker:
        fn()
    return tracker.peak / 2**20


def _min_ms(fn: Callable[[], Any], warmup: int, repeats: int) -> float:
    """Fastest of `repeats` calls (robust to other load on a shared machine)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device().type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device().type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def _inputs(batch: int, dev: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    pad = torch.ones(batch, PREFIX_LEN + SUFFIX_LEN, dtype=torch.bool)
    pad[:, PREFIX_LEN - PADDED : PREFIX_LEN] = False  # right-padded prompt
    ar = torch.zeros_like(pad)
    ar[:, PREFIX_LEN] = True  # pi0.5 suffix: one action block
    tensors = {
        "prefix": torch.randn(batch, PREFIX_LEN, BACKBONE.width, generator=gen).to(dtype),
        "suffix": torch.randn(batch, SUFFIX_LEN, EXPERT.width, generator=gen).to(dtype),
        "cond": torch.randn(batch, EXPERT.width, generator=gen).to(dtype),
        "pad_mask": pad,
        "ar_mask": ar,
        "positions": torch.cumsum(pad.long(), 1) - 1,
    }
    return {name: t.to(dev) for name, t in tensors.items()}


def run_case(case: str, args: argparse.Namespace) -> dict[str, float | None]:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    dev = device()
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    train = case.startswith("train:")
    backend, checkpointing = (case.split(":")[1], case.endswith(":on")) if train else (case, False)
    config = Gemma3EngineConfig(
        backbone=BACKBONE,
        expert=EXPERT,
        attention_implementation=backend,
    )
    engine = Gemma3JointEngine(config, expert_cond_dim=EXPERT.width).to(dev, dtype)
    if checkpointing:
        apply_activation_checkpointing(engine, (JointDecoderLayer,))
    x = _inputs(args.batch, dev, dtype)

    def call():
        return engine(
            x["prefix"],
            x["suffix"],
            pad_mask=x["pad_mask"],
            ar_mask=x["ar_mask"],
            positions=x["positions"],
            expert_cond=x["cond"],
        )

    if train:
        engine.train()

        def step() -> None:
            out = call()
            (out.suffix.float().pow(2).mean() + out.prefix.float().pow(2).mean()).backward()
            engine.zero_grad(set_to_none=True)

        fn = step
    else:
        engine.eval()

        def forward() -> None:
            with torch.no_grad():
                call()

        fn = forward
    # flex's higher-order op cannot run under a Python dispatch mode: no CPU memory figure.
    peak = None if backend == "flex" and dev.type == "cpu" else _peak_mib(fn)
    return {"ms": _min_ms(fn, args.warmup, args.repeats), "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="/tmp/vla_core_gemma3_backends.json")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return
    results = run_cases(__file__, FORWARD_CASES + TRAIN_CASES, args)

    tokens = f"prefix {PREFIX_LEN} ({PADDED} padded) + suffix {SUFFIX_LEN}, batch {args.batch}"
    print(f"Gemma-3 engine, reduced widths, {tokens}; {environment()}")
    print("\n| joint forward | min ms | time / eager | peak tensor MiB | peak / eager |")
    print("|---|---|---|---|---|")
    _rows(results, FORWARD_CASES, "eager")
    print(
        "\n| train step (fwd+bwd) | min ms | time / ckpt off | peak tensor MiB | peak / ckpt off |"
    )
    print("|---|---|---|---|---|")
    _rows(results, TRAIN_CASES[:2], "train:sdpa:off")
    _rows(results, TRAIN_CASES[2:], "train:eager:off")
    payload = {
        "benchmark": "gemma3_backends",
        "environment": environment(),
        "batch": args.batch,
        "prefix_len": PREFIX_LEN,
        "suffix_len": SUFFIX_LEN,
        "results": results,
    }
    write_json(args.out, payload)
    print(f"\nwrote {args.out}")


def _rows(results: dict[str, dict[str, Any]], cases: list[str], base_case: str) -> None:
    base = results[base_case]
    for case in cases:
        r = results[case]
        if "error" in r or "error" in base:
            print(f"| {case} | error: {r.get('error', base.get('error'))} | | | |")
            continue
        if r["peak_mib"] is None or base["peak_mib"] is None:
            memory = "n/a | n/a"
        else:
            memory = f"{r['peak_mib']:.1f} | {r['peak_mib'] / max(base['peak_mib'], 1e-9):.2f}"
        print(f"| {case} | {r['ms']:.1f} | {r['ms'] / base['ms']:.2f} | {memory} |")


if __name__ == "__main__":
    main()
