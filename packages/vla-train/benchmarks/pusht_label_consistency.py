"""How consistent are the scripted expert's labels? Success on seeded resets and label spread.

A policy can only imitate an expert whose action is a function of what it observes. This rolls
the expert out on `--num-seeds` resets and, over all recorded frames, finds pairs of frames from
different moments whose observations are within `--radius` px (max norm over agent position and
the T's 8 keypoints; with `--history`, over the policy's 2-step observation window) and measures
how far apart their first action targets are. Prints one table, writes JSON to --out.

    uv run --package vla-train python packages/vla-train/benchmarks/pusht_label_consistency.py \\
        --num-seeds 100 --first-seed 0 [--expert controller]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import numpy as np


def _episode(job: tuple[int, str]) -> tuple[int, bool, float, int, float, np.ndarray, np.ndarray]:
    from vla_train.pusht import run_expert_episode

    seed, expert = job
    ep = run_expert_episode(seed, image=False, expert=expert)
    obs = np.concatenate(
        [ep.frames["observation.state"], ep.frames["observation.environment_state"]], 1
    )
    return (
        seed,
        ep.success,
        ep.max_coverage,
        ep.length,
        ep.planning_cpu_seconds,
        obs,
        ep.frames["action"],
    )


def label_spread(
    episodes: list[tuple[np.ndarray, np.ndarray]], radius: float, history: bool
) -> dict[str, Any]:
    """Distances between the first targets of frame pairs with observations < `radius` apart."""
    from scipy.spatial import cKDTree

    obs, act, epi, t = [], [], [], []
    for i, (o, a) in enumerate(episodes):
        if history:  # (previous, current) as the policy sees it; the reset frame repeats
            o = np.concatenate([np.concatenate([o[:1], o[:-1]]), o], 1)
        obs.append(o)
        act.append(a)
        epi.append(np.full(len(o), i))
        t.append(np.arange(len(o)))
    o, a, e, tt = map(np.concatenate, (obs, act, epi, t))
    pairs = cKDTree(o).query_pairs(radius, p=np.inf, output_type="ndarray")
    pairs = pairs[~((e[pairs[:, 0]] == e[pairs[:, 1]]) & (tt[pairs[:, 0]] == tt[pairs[:, 1]]))]
    d = np.linalg.norm(a[pairs[:, 0]] - a[pairs[:, 1]], axis=1)
    if len(d) == 0:
        return {"pairs": 0}
    return {
        "pairs": len(d),
        "median_px": float(np.median(d)),
        "mean_px": float(d.mean()),
        "frac_over_10px": float((d > 10).mean()),
    }


def replan_drift(seeds: list[int]) -> dict[int, dict[str, float]]:
    """How far a fresh plan made k steps into an executing plan departs from it: the first-target
    distance, per k. A policy queried every 8 steps is trained on windows that start mid-plan, so
    this is the label noise between its training windows and its own decision points."""
    from vla_train.pusht.episodes import make_env
    from vla_train.pusht.expert import PushTExpert
    from vla_train.pusht.sim import snapshot

    expert, fresh = PushTExpert(), PushTExpert()
    drift: dict[int, list[float]] = {}
    for seed in seeds:
        env = make_env()
        env.reset(seed=seed)
        done = False
        while not done:
            plan = expert.plan(snapshot(env)).targets
            for k, target in enumerate(plan[: expert.config.replan_every]):
                if k > 0:
                    first = fresh.plan(snapshot(env)).targets[0]
                    drift.setdefault(k, []).append(float(np.linalg.norm(first - target)))
                _, _, terminated, truncated, _ = env.step(target)
                if terminated or truncated:
                    done = True
                    break
        env.close()
    return {
        k: {"median_px": float(np.median(v)), "frac_over_10px": float(np.mean(np.array(v) > 10))}
        for k, v in sorted(drift.items())
    }


def main() -> None:
    from vla_train.pusht.controller import EXPERTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-seeds", type=int, default=100)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--radius", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--drift-seeds", type=int, default=5, help="seeds for the replan drift")
    parser.add_argument("--expert", choices=EXPERTS, default="planner")
    parser.add_argument("--out", type=Path, default=Path("/tmp/vla_bench/label_consistency.json"))
    args = parser.parse_args()
    seeds = list(range(args.first_seed, args.first_seed + args.num_seeds))
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        rows = pool.map(_episode, [(seed, args.expert) for seed in seeds])
    success = [r[1] for r in rows]
    summary: dict[str, Any] = {
        "seeds": [seeds[0], seeds[-1]],
        "success_rate": float(np.mean(success)),
        "mean_max_coverage": float(np.mean([r[2] for r in rows])),
        "mean_steps": float(np.mean([r[3] for r in rows])),
        "planning_cpu_s_per_step": float(sum(r[4] for r in rows) / sum(r[3] for r in rows)),
        "failed_seeds": [r[0] for r in rows if not r[1]],
    }
    episodes = [(r[5], r[6]) for r in rows]
    for history in (False, True):
        key = "spread_history" if history else "spread_single"
        summary[key] = label_spread(episodes, args.radius, history)
    print(f"PushT {args.expert} on seeds {seeds[0]}..{seeds[-1]} (one core per worker)")
    print(f"success {summary['success_rate']:.0%}, mean max-coverage "
          f"{summary['mean_max_coverage']:.3f}, {summary['mean_steps']:.0f} steps, "
          f"{1000 * summary['planning_cpu_s_per_step']:.1f} ms planning CPU / step")  # fmt: skip
    print(f"| observations < {args.radius:g} px apart | pairs | median | mean | > 10 px |")
    print("|---|---|---|---|---|")
    for key, name in (("spread_single", "one frame"), ("spread_history", "2-frame window")):
        s = summary[key]
        if s["pairs"]:
            print(f"| {name} | {s['pairs']} | {s['median_px']:.2f} px | {s['mean_px']:.2f} px | "
                  f"{100 * s['frac_over_10px']:.1f} % |")  # fmt: skip
    if args.expert == "planner":  # the controller decides afresh every step: no plan to drift
        summary["replan_drift"] = replan_drift(seeds[: args.drift_seeds])
        print(f"| fresh plan k steps into a plan (seeds {seeds[0]}..{seeds[args.drift_seeds - 1]}) "
              "| first-target distance, median | > 10 px |")  # fmt: skip
        print("|---|---|---|")
        for k, d in summary["replan_drift"].items():
            print(f"| k = {k} | {d['median_px']:.2f} px | {100 * d['frac_over_10px']:.0f} % |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
