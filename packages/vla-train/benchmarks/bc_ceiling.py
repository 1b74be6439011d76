"""How imitable are the generated PushT demos? A plain MLP behaviour-cloning regressor per dataset.

Reference point for the iMF numbers: an MLP (obs window -> the whole action chunk, MSE on
normalised actions, cosine lr) is trained on each listed dataset with the same step budget and
evaluated with the same gym-pusht protocol (`vla_train.eval.evaluate`, seeds 100000...). If this
deterministic regressor, given far more samples than the CPU default sees, stays far from the
expert, the gap is the data's (discrete planner decisions, few states off the expert's path), not
the generative policy's. Prints one table and writes JSON to --out.

    uv run python packages/vla-train/benchmarks/bc_ceiling.py --episodes 100 1000 --steps 10000

`--run-dir RUN` instead trains the regressor on exactly the data a `vla-train` run trained on
(its demos plus every DAgger round under RUN/dagger, in the run's `task.frame`) and evaluates it on
the run's evaluation seeds: "a plain regressor on the same data".

    uv run python packages/vla-train/benchmarks/bc_ceiling.py --run-dir outputs/<run> --steps 3000

`--windows all|decision` overrides which of that run's windows it trains on (every window, or
only those that start at a fresh expert decision, `expert.replanned`); `--start-seed 300000`
evaluates on validation seeds instead of the test seeds (for choosing between data recipes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vla_train.data import LeRobotWindowDataset
from vla_train.data.layout import atomic_write_json
from vla_train.eval import evaluate
from vla_train.pusht import ensure_default_dataset

KEYS = ("observation.state", "observation.environment_state")
N_OBS_STEPS, HORIZON, N_ACTION_STEPS = 2, 16, 8  # diffusion_policy's PushT windows, as the trainer


def fit_bc(ds: LeRobotWindowDataset, steps: int, batch: int, hidden: int, seed: int) -> nn.Module:
    """Train the MLP on every window of `ds` (held in memory); returns a `predict_action` module."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    samples = [ds[i] for i in range(len(ds))]
    obs = torch.stack([torch.cat([s[k] for k in KEYS], -1).flatten() for s in samples])
    act = torch.stack([s["action"] for s in samples])
    o_mean, o_std = obs.mean(0), obs.std(0) + 1e-3
    a_mean, a_std = act.flatten(0, 1).mean(0), act.flatten(0, 1).std(0) + 1e-3
    x, y = (obs - o_mean) / o_std, ((act - a_mean) / a_std).flatten(1)
    net = nn.Sequential(
        nn.Linear(x.shape[1], hidden), nn.Mish(),
        nn.Linear(hidden, hidden), nn.Mish(),
        nn.Linear(hidden, hidden), nn.Mish(),
        nn.Linear(hidden, y.shape[1]),
    )  # fmt: skip
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,))
        loss = (net(x[idx]) - y[idx]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()

    chunk_shape, start = act.shape[1:], ds.n_obs_steps - 1

    class BCPolicy(nn.Module):
        def forward(self, window: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            flat = torch.cat([window[k] for k in KEYS], -1).flatten(1)
            chunk = net((flat - o_mean) / o_std).view(-1, *chunk_shape) * a_std + a_mean
            return {"action": chunk[:, start : start + N_ACTION_STEPS]}

    return BCPolicy().eval()


def run_rows(run_dir: Path, args: argparse.Namespace) -> list[dict]:
    """The regressor trained on a run's own training set, evaluated like the run."""
    from vla_train.checkpoint import latest_checkpoint, load_train_state
    from vla_train.config import from_dict
    from vla_train.pusht.rollouts import in_policy_frame, world_policy
    from vla_train.recipes.pusht_imf import build_dataset, dataset_root, with_dagger_rounds

    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint")
    cfg = from_dict(json.loads((ckpt / "config.json").read_text())["hydra"]).pusht
    if cfg is None:
        raise ValueError(f"{run_dir} is not a pusht_imf run")
    if args.windows != "run":  # all windows, or only those starting at a fresh expert decision
        dataset = dataclasses.replace(cfg.task.dataset, decision_windows=args.windows == "decision")
        cfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, dataset=dataset))
    state = load_train_state(ckpt)
    position = state.get("recipe") or state.get("position") or {}  # "position": before 0.3.0
    rounds = int(position.get("dagger_round", 0))
    data = in_policy_frame(
        with_dagger_rounds(build_dataset(cfg, dataset_root(cfg)), run_dir, rounds), cfg
    )
    data.n_obs_steps = N_OBS_STEPS
    tic = time.perf_counter()
    net = fit_bc(data, args.steps, args.batch, args.hidden, args.seed)
    train_s = time.perf_counter() - tic
    predict = world_policy(type("Wrapped", (), {"predict_action": staticmethod(net)})(), cfg)
    r = evaluate(
        predict, obs_type="environment_state_agent_pos", obs_keys=KEYS, n_obs_steps=N_OBS_STEPS,
        n_episodes=args.n_test, n_envs=25,
        start_seed=cfg.eval.start_seed if args.start_seed is None else args.start_seed,
    )  # fmt: skip
    label = (
        f"{run_dir.name} (+{rounds} DAgger rounds, frame {cfg.task.frame}, "
        f"{'decision' if cfg.task.dataset.decision_windows else 'all'} windows)"
    )
    return [result_row(label, len(data), args, train_s, r)]


def result_row(
    label: str | int, windows: int, args: argparse.Namespace, train_s: float, r: Any
) -> dict:
    return {
        "episodes": label,
        "windows": windows,
        "steps": args.steps,
        "batch": args.batch,
        "samples_seen": args.steps * args.batch,
        "train_s": train_s,
        "success_rate": r.success_rate,
        "mean_max_coverage": r.mean_max_coverage,
        "mean_score": r.mean_score,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--n-test", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/vla_bc_ceiling.json"))
    parser.add_argument("--run-dir", type=Path, default=None, help="train on this run's data")
    parser.add_argument(
        "--windows", choices=("run", "all", "decision"), default="run",
        help="with --run-dir: the run's windows, all windows, or decision windows only",
    )  # fmt: skip
    parser.add_argument(
        "--start-seed", type=int, default=None,
        help="first evaluation seed (default: the run's test seeds; e.g. 300000 for validation)",
    )  # fmt: skip
    args = parser.parse_args()

    rows = run_rows(args.run_dir, args) if args.run_dir is not None else []
    for n in [] if args.run_dir is not None else args.episodes:
        root = ensure_default_dataset(num_episodes=n, seed=0, image=False)
        ds = LeRobotWindowDataset(
            root, n_obs_steps=N_OBS_STEPS, horizon=HORIZON, keys=KEYS, n_action_steps=N_ACTION_STEPS
        )
        tic = time.perf_counter()
        policy = fit_bc(ds, args.steps, args.batch, args.hidden, args.seed)
        train_s = time.perf_counter() - tic
        r = evaluate(
            policy, obs_type="environment_state_agent_pos", obs_keys=KEYS, n_obs_steps=N_OBS_STEPS,
            n_episodes=args.n_test, n_envs=25,
        )  # fmt: skip
        rows.append(result_row(n, len(ds), args, train_s, r))
        print(json.dumps(rows[-1]), flush=True)

    print("\n| demos | windows | samples seen | success | mean max-coverage | score | train s |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['episodes']} | {row['windows']:,} | {row['samples_seen']:,} | "
            f"{row['success_rate']:.2f} | {row['mean_max_coverage']:.3f} | "
            f"{row['mean_score']:.3f} | {row['train_s']:.0f} |"
        )
    atomic_write_json(args.out, {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows})


if __name__ == "__main__":
    main()
