"""eager vs sdpa vs flex: engine forward time and peak memory on a reduced-width pi0 with a
realistic 816-token prefix (3 cameras x 256 + 48 prompt tokens, 10 padded) and a 51-token suffix.

    OMP_NUM_THREADS=2 uv run python packages/vla-core/benchmarks/bench_attention.py --out /tmp/vla_core_bench_attention.json
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch
from _harness import (
    device,
    environment,
    median_time,
    peak_memory,
    reduced_pi0_config,
    run_cases,
    write_json,
)

from vla_core import JointEngine

CASES = ["eager", "sdpa", "flex"]


def _inputs(config, batch: int, dev: torch.device):
    gen = torch.Generator().manual_seed(0)
    prefix_len, suffix_len = 3 * 256 + config.max_token_len, 1 + config.action_horizon
    prefix = torch.randn(batch, prefix_len, config.backbone.width, generator=gen).to(dev)
    suffix = torch.randn(batch, suffix_len, config.expert.width, generator=gen).to(dev)
    pad = torch.ones(batch, prefix_len + suffix_len, dtype=torch.bool)
    pad[:, prefix_len - 10 : prefix_len] = False  # right-padded prompt
    ar = torch.zeros_like(pad)
    ar[:, prefix_len : prefix_len + 2] = True  # state block, then the action block
    positions = torch.cumsum(pad.long(), 1) - 1
    return prefix, suffix, pad.to(dev), ar.to(dev), positions.to(dev)


def run_case(case: str, args) -> dict:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    dev = device()
    config = reduced_pi0_config(attention=case)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    engine = JointEngine(config.engine).to(dev, dtype).eval()
    prefix, suffix, pad, ar, positions = _inputs(config, args.batch, dev)
    prefix, suffix = prefix.to(dtype), suffix.to(dtype)

    def forward():
        with torch.no_grad():
            return engine(prefix, suffix, pad_mask=pad, ar_mask=ar, positions=positions)

    peak = peak_memory(forward)
    ms, cpu_ms = median_time(forward, warmup=args.warmup, repeats=args.repeats)
    return {"forward_ms": ms, "forward_cpu_ms": cpu_ms, "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="/tmp/vla_core_bench_attention.json")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return
    results = run_cases(__file__, CASES, args)
    base = results["eager"]
    print(
        f"engine joint forward, reduced-width pi0, prefix 816 + suffix 51, batch {args.batch}, {environment()}"
    )
    print("| backend | forward wall ms | CPU ms | CPU time / eager | peak MiB | peak / eager |")
    print("|---|---|---|---|---|---|")
    for case, r in results.items():
        if "error" in r:
            print(f"| {case} | error: {r['error']} | | | | |")
            continue
        print(
            f"| {case} | {r['forward_ms']:.1f} | {r['forward_cpu_ms']:.1f} | "
            f"{r['forward_cpu_ms'] / base['forward_cpu_ms']:.2f} | "
            f"{r['peak_mib']:.1f} | {r['peak_mib'] / max(base['peak_mib'], 1e-9):.2f} |"
        )
    write_json(
        args.out,
        {
            "benchmark": "attention_backends",
            "environment": environment(),
            "batch": args.batch,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
