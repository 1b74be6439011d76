"""`sample_actions` latency (prefix once + 10 Euler steps) on a reduced-width pi0 / pi0.5, eager
PyTorch vs `torch.compile` of the prefix pass and the denoise step (compile time reported apart).

    OMP_NUM_THREADS=2 uv run python packages/vla-core/benchmarks/bench_sampling.py --out /tmp/vla_core_bench_sampling.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch
from _harness import device, environment, median_time, reduced_pi0_config, run_cases, write_json

from vla_core import PI0Model
from vla_core._testing import random_observation

CASES = ["eager-mode", "compiled"]


def run_case(case: str, args) -> dict:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    dev = device()
    config = reduced_pi0_config(attention="sdpa", variant=args.variant)
    if dev.type == "cuda":
        config = config.replace(dtype="bfloat16")
    model = PI0Model(config).to(dev).eval()
    obs = random_observation(config, batch_size=args.batch, device=dev)
    noise = torch.randn(args.batch, config.action_horizon, config.action_dim, device=dev)
    reference = model.sample_actions(obs, noise=noise, num_steps=args.steps)
    compile_s = 0.0
    if case == "compiled":
        model.fill_prefix_cache = torch.compile(model.fill_prefix_cache, dynamic=False)  # type: ignore[method-assign]
        model.denoise_step = torch.compile(model.denoise_step, dynamic=False)  # type: ignore[method-assign]
        start = time.perf_counter()
        compiled_out = model.sample_actions(obs, noise=noise, num_steps=args.steps)
        compile_s = time.perf_counter() - start
        max_diff = float((compiled_out - reference).abs().max())
    else:
        max_diff = 0.0
    ms, cpu_ms = median_time(
        lambda: model.sample_actions(obs, noise=noise, num_steps=args.steps),
        warmup=args.warmup,
        repeats=args.repeats,
    )
    return {
        "latency_ms": ms,
        "latency_cpu_ms": cpu_ms,
        "first_call_s": compile_s,
        "max_abs_diff_vs_eager": max_diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case")
    parser.add_argument("--variant", default="pi05", choices=["pi0", "pi05"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="/tmp/vla_core_bench_sampling.json")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return
    results = run_cases(__file__, CASES, args)
    base = results["eager-mode"]
    print(
        f"sample_actions, reduced-width {args.variant}, prefix 816, {args.steps} steps, batch {args.batch}, "
        f"{environment()}"
    )
    print(
        "| mode | latency wall ms | latency CPU ms | CPU time / eager-mode | first call (compile) s "
        "| max abs diff vs eager |"
    )
    print("|---|---|---|---|---|---|")
    for case, r in results.items():
        if "error" in r:
            print(f"| {case} | error: {r['error']} | | | | |")
            continue
        print(
            f"| {case} | {r['latency_ms']:.1f} | {r['latency_cpu_ms']:.1f} | "
            f"{r['latency_cpu_ms'] / base['latency_cpu_ms']:.2f} | "
            f"{r['first_call_s']:.1f} | {r['max_abs_diff_vs_eager']:.2e} |"
        )
    write_json(
        args.out,
        {
            "benchmark": "sample_actions",
            "environment": environment(),
            "variant": args.variant,
            "batch": args.batch,
            "steps": args.steps,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
