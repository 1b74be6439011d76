"""Training step (loss forward + backward) with and without per-layer gradient checkpointing on a
reduced-width pi0 (816-token prefix incl. a small SigLIP at 224², 3 cameras): peak memory and time.

    OMP_NUM_THREADS=2 uv run python packages/vla-core/benchmarks/bench_checkpointing.py --out /tmp/vla_core_bench_checkpointing.json
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

from vla_core import JointDecoderLayer, PI0Model, apply_activation_checkpointing
from vla_core._testing import random_actions, random_observation

CASES = ["off", "on"]


def run_case(case: str, args) -> dict:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    dev = device()
    config = reduced_pi0_config(attention="sdpa", variant=args.variant)
    if dev.type == "cuda":
        config = config.replace(dtype="bfloat16")
    model = PI0Model(config).to(dev).train()
    if case == "on":
        apply_activation_checkpointing(model, (JointDecoderLayer,))
    obs = random_observation(config, batch_size=args.batch, device=dev)
    actions = random_actions(config, batch_size=args.batch).to(dev)
    noise = torch.randn_like(actions)
    time = torch.full((args.batch,), 0.5, device=dev)

    def step():
        model.zero_grad(set_to_none=True)
        loss = model(obs, actions, noise=noise, time=time).mean()
        loss.backward()
        return loss

    peak = peak_memory(step)
    ms, cpu_ms = median_time(step, warmup=args.warmup, repeats=args.repeats)
    return {"step_ms": ms, "step_cpu_ms": cpu_ms, "peak_mib": peak, "loss": float(step().item())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case")
    parser.add_argument("--variant", default="pi0", choices=["pi0", "pi05"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="/tmp/vla_core_bench_checkpointing.json")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return
    results = run_cases(__file__, CASES, args)
    off, on = results["off"], results["on"]
    print(
        f"train step, reduced-width {args.variant}, prefix 816, batch {args.batch}, sdpa, {environment()}"
    )
    print("| checkpointing | step wall ms | step CPU ms | peak MiB | loss |")
    print("|---|---|---|---|---|")
    for case, r in results.items():
        if "error" in r:
            print(f"| {case} | error: {r['error']} | | | |")
        else:
            print(
                f"| {case} | {r['step_ms']:.1f} | {r['step_cpu_ms']:.1f} | {r['peak_mib']:.1f} | "
                f"{r['loss']:.6f} |"
            )
    ratios = {}
    if "error" not in off and "error" not in on:
        ratios = {
            "peak_on_over_off": on["peak_mib"] / max(off["peak_mib"], 1e-9),
            "time_on_over_off": on["step_ms"] / off["step_ms"],
            "cpu_time_on_over_off": on["step_cpu_ms"] / off["step_cpu_ms"],
        }
        print(
            f"| ratio on/off | {ratios['time_on_over_off']:.2f} | "
            f"{ratios['cpu_time_on_over_off']:.2f} | {ratios['peak_on_over_off']:.2f} | "
            f"{'identical' if on['loss'] == off['loss'] else 'DIFFERENT'} |"
        )
    write_json(
        args.out,
        {
            "benchmark": "gradient_checkpointing",
            "environment": environment(),
            "variant": args.variant,
            "batch": args.batch,
            "results": results,
            "ratios": ratios,
        },
    )


if __name__ == "__main__":
    main()
