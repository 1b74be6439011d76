"""Scripted PushT expert vs a random-action baseline on the same seeded gym-pusht resets.

Success = gym-pusht's `is_success` (coverage > 0.95) within 300 steps. Planning time is the
expert's own `plan()` time per episode, as wall clock and as process CPU time (one core; the CPU
time is the honest number on a shared machine). Prints one table, writes JSON to --out.

    OMP_NUM_THREADS=1 uv run --package vla-train python packages/vla-train/benchmarks/pusht_expert.py
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from vla_train.pusht import make_env, run_expert_episode


def random_episode(seed: int, max_steps: int = 300) -> tuple[bool, float]:
    """A random walk of absolute targets (bounded steps), the no-skill reference."""
    env = make_env(max_steps=max_steps)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    target = np.asarray(obs["agent_pos"], dtype=np.float64)
    max_coverage, success = 0.0, False
    for _ in range(max_steps):
        target = np.clip(target + rng.normal(0, 15, 2), 0, 512)
        _, _, terminated, truncated, info = env.step(target.astype(np.float32))
        max_coverage = max(max_coverage, float(info["coverage"]))
        success = bool(info["is_success"])
        if terminated or truncated:
            break
    env.close()
    return success, max_coverage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-seeds", type=int, default=50)
    parser.add_argument("--first-seed", type=int, default=100_000, help="DP's test-seed range")
    parser.add_argument("--out", type=Path, default=Path("/tmp/vla_bench/pusht_expert.json"))
    args = parser.parse_args()
    seeds = list(range(args.first_seed, args.first_seed + args.num_seeds))

    rows = []
    for seed in seeds:
        t0 = time.perf_counter()
        ep = run_expert_episode(seed, image=False)
        wall = time.perf_counter() - t0
        rnd_success, rnd_cov = random_episode(seed)
        rows.append(
            {
                "seed": seed,
                "success": ep.success,
                "max_coverage": ep.max_coverage,
                "steps": ep.length,
                "planning_s": ep.planning_seconds,
                "planning_cpu_s": ep.planning_cpu_seconds,
                "episode_wall_s": wall,
                "random_success": rnd_success,
                "random_max_coverage": rnd_cov,
            }
        )
        print(
            f"seed {seed}: success={ep.success} max_cov={ep.max_coverage:.3f} "
            f"steps={ep.length} plan_cpu={ep.planning_cpu_seconds:.2f}s",
            flush=True,
        )

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in rows]))

    expert_success, random_success = mean("success"), mean("random_success")
    expert_cov, random_cov = mean("max_coverage"), mean("random_max_coverage")
    plan_cpu = [r["planning_cpu_s"] for r in rows]
    summary = {
        "seeds": [seeds[0], seeds[-1]],
        "expert_success_rate": expert_success,
        "random_success_rate": random_success,
        "expert_mean_max_coverage": expert_cov,
        "random_mean_max_coverage": random_cov,
        "expert_mean_steps": mean("steps"),
        "planning_cpu_s_mean": float(np.mean(plan_cpu)),
        "planning_cpu_s_p90": float(np.percentile(plan_cpu, 90)),
        "planning_cpu_s_max": float(np.max(plan_cpu)),
        "planning_wall_s_mean": mean("planning_s"),
        "episode_wall_s_mean": mean("episode_wall_s"),
        "machine": platform.processor() or platform.machine(),
    }
    print()
    print(f"PushT, {len(seeds)} seeded resets ({seeds[0]}..{seeds[-1]}), 300 steps, one core")
    print("| metric | expert | random | expert / random |")
    print("|---|---|---|---|")
    ratio = lambda a, b: f"{a / b:.1f}x" if b > 0 else "inf"  # noqa: E731
    print(f"| success rate | {expert_success:.0%} | {random_success:.0%} | "
          f"{ratio(expert_success, random_success)} |")  # fmt: skip
    print(f"| mean max coverage | {expert_cov:.3f} | {random_cov:.3f} | "
          f"{ratio(expert_cov, random_cov)} |")  # fmt: skip
    print(f"| mean steps | {summary['expert_mean_steps']:.0f} | 300 | "
          f"{summary['expert_mean_steps'] / 300:.2f} |")  # fmt: skip
    print(f"| planning CPU s / episode (mean, p90, max) | {summary['planning_cpu_s_mean']:.2f}, "
          f"{summary['planning_cpu_s_p90']:.2f}, {summary['planning_cpu_s_max']:.2f} | 0 | - |")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "episodes": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
