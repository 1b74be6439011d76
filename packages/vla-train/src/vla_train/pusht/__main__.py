"""Generate PushT expert demonstrations as a LeRobot v3.0 dataset.

uv run --package vla-train python -m vla_train.pusht --out /tmp/pusht --num-episodes 50
uv run --package vla-train python -m vla_train.pusht        # the cached default dataset
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from vla_train.pusht.controller import EXPERTS
from vla_train.pusht.generate import GENERATION_META, ensure_default_dataset, generate_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="dataset root (default: the user cache)")
    parser.add_argument("--num-episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="first env seed")
    parser.add_argument("--no-image", action="store_true", help="low-dim observations only")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument(
        "--action-noise",
        type=float,
        default=0.0,
        help="std (px) of noise added to executed actions; labels stay clean (DART)",
    )
    parser.add_argument(
        "--expert",
        choices=EXPERTS,
        default="planner",
        help="the sampling planner or the analytic push controller",
    )
    args = parser.parse_args(argv)
    options: dict[str, Any] = {
        "image": not args.no_image,
        "workers": args.workers,
        "action_noise": args.action_noise,
        "expert": args.expert,
    }
    if args.out is None:
        root = ensure_default_dataset(args.num_episodes, args.seed, **options)
    else:
        root = generate_dataset(
            args.out, args.num_episodes, args.seed, overwrite=args.overwrite, **options
        )
    summary = json.loads((root / GENERATION_META).read_text())
    print(
        f"{root}: {len(summary['episode_seeds'])} episodes kept of {summary['seeds_tried']} "
        f"seeds (success {summary['success_rate']:.1%}, mean max coverage "
        f"{summary['mean_max_coverage']:.3f}, mean planning {summary['mean_planning_seconds']:.2f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
