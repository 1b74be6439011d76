"""Evaluate a finished PushT run's EMA policy on any seeds (e.g. validation seeds for choosing
between recipes without looking at the test seeds 100000–100199).

Loads `<run>/checkpoints/latest` (config.json + ema.safetensors), converts to and from the run's
`task.frame` like the trainer's evaluation, and rolls out with `vla_train.eval.evaluate`.
`--execute k` runs only the first k of the policy's predicted steps before re-querying.
Prints one JSON line per run and writes them to --out.

    uv run --package vla-train python packages/vla-train/benchmarks/pusht_eval_run.py \\
        outputs/run_a outputs/run_b --start-seed 300000 --n 200
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from vla_imf import IMFPolicy
from vla_train.atomic import atomic_write_json
from vla_train.checkpoint import latest_checkpoint, load_weights
from vla_train.config import from_dict
from vla_train.eval import evaluate
from vla_train.pusht.rollouts import world_policy

KEYS = ("observation.state", "observation.environment_state")


def load_run_policy(run_dir: Path) -> tuple[IMFPolicy, Any]:
    """The run's EMA policy (eval mode) and its PushT config (for the frame conversion)."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint")
    cfg = from_dict(json.loads((ckpt / "config.json").read_text())["hydra"]).pusht
    if cfg is None:
        raise ValueError(f"{run_dir} is not a pusht_imf run")
    policy = IMFPolicy(cfg.policy)
    ema = ckpt / "ema.safetensors"
    load_weights(policy, ema if ema.is_file() else ckpt / "model.safetensors")
    return policy.eval(), cfg


def evaluate_run(run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    policy, cfg = load_run_policy(run_dir)
    predict = world_policy(policy, cfg)  # the trainer's own frame conversion

    def act(obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = predict(obs, num_inference_steps=args.steps)
        return {"action": out["action"][:, : args.execute] if args.execute else out["action"]}

    torch.manual_seed(args.seed)
    with torch.no_grad():
        r = evaluate(
            act, obs_type="environment_state_agent_pos", obs_keys=KEYS, n_obs_steps=2,
            n_episodes=args.n, start_seed=args.start_seed, n_envs=25,
        )  # fmt: skip
    return {"run": str(run_dir), "seeds": [args.start_seed, args.start_seed + args.n - 1],
            "sampling_steps": args.steps, "execute": args.execute, **r.summary()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--start-seed", type=int, default=300000)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--steps", type=int, default=1, help="sampling steps")
    parser.add_argument("--execute", type=int, default=0, help="steps per query (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="sampling noise seed")
    parser.add_argument("--out", type=Path, default=Path("/tmp/vla_bench/pusht_eval_run.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for run in args.runs:
        rows.append(evaluate_run(run, args))
        print(json.dumps(rows[-1]), flush=True)
    atomic_write_json(args.out, rows)


if __name__ == "__main__":
    main()
