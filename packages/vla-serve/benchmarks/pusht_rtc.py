"""Closed-loop PushT through the policy server: synchronous vs naive async vs RTC, simulated delay.

A vla-imf PushT checkpoint (any vla-train run or checkpoint directory) is served in-process on a
loopback port and driven with `vla_serve.PolicyClient`. The inference delay is simulated in control
steps: a request sent at step k is answered at once (the model's real latency does not matter),
but its chunk only becomes usable at step k + d, while the world keeps executing the old chunk.
"sync" is the reference where the world waits for every chunk (d does not apply).

Episodes follow diffusion_policy's PushT protocol (vla-train's evaluation): seeds start_seed + i,
`max_steps` env steps, success = coverage > 0.95 (gym-pusht's `terminated`), the observation
window repeats the first frame at reset. Also measured: server overhead = client round trip minus
the server's `infer_ms`, per call at batch 1.

    uv run --package vla-serve --group bench python packages/vla-serve/benchmarks/pusht_rtc.py \
        --checkpoint /tmp/wt20_runs/fm_attnres_emb64_layer2_seed42 --episodes 50

Prints one table (success, coverage, seam |Δa|) and writes JSON (`--out`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import deque
from pathlib import Path
from typing import Any

import gym_pusht  # noqa: F401  (registers gym_pusht/PushT-v0)
import gymnasium as gym
import numpy as np
import torch

from vla_core.rtc import RTCConfig
from vla_serve import (
    ChunkingConfig,
    ChunkScheduler,
    IMFServeConfig,
    IMFServedPolicy,
    PolicyClient,
    PolicyServer,
    ServerConfig,
    load_imf_policy,
)

SUCCESS_COVERAGE = 0.95


def frame_from_env(obs: dict[str, np.ndarray], keys: list[str]) -> dict[str, np.ndarray]:
    """gym-pusht observation -> the dataset keys vla-train trains on (LeRobot PushT naming)."""
    frame = {"observation.state": np.asarray(obs["agent_pos"], np.float32)}
    if "environment_state" in obs:
        frame["observation.environment_state"] = np.asarray(obs["environment_state"], np.float32)
    if "pixels" in obs:
        frame["observation.image"] = np.asarray(obs["pixels"]).transpose(2, 0, 1) / 255.0
    return {k: frame[k].astype(np.float32) for k in keys}


def run_episode(
    env: Any,
    client: PolicyClient,
    *,
    seed: int,
    mode: str,
    delay: int,
    keys: list[str],
    n_obs_steps: int,
    chunking: ChunkingConfig,
    max_steps: int,
    overheads: list[float],
) -> dict[str, Any]:
    obs, _ = env.reset(seed=seed)
    history = deque([frame_from_env(obs, keys)] * n_obs_steps, maxlen=n_obs_steps)
    scheduler = ChunkScheduler(chunking)
    pending: tuple[np.ndarray, int] | None = None
    max_coverage, success = 0.0, False
    for step in range(max_steps):
        if pending is not None and step >= pending[1]:
            scheduler.receive(pending[0], step)
            pending = None
        if scheduler.wants_request():
            request: dict[str, Any] = {k: np.stack([f[k] for f in history]) for k in keys}
            rtc = scheduler.request(step, delay)
            if rtc is not None:
                request["rtc"] = rtc
            tic = time.perf_counter()
            reply = client.infer(request)
            overheads.append(
                (time.perf_counter() - tic) * 1000 - reply["server_timing"]["infer_ms"]
            )
            chunk = reply["action_chunk"]
            if mode == "sync" or scheduler.chunk is None or delay == 0:
                scheduler.receive(chunk, step)  # the world waited for this chunk
            else:
                pending = (chunk, step + delay)
        obs, _, terminated, truncated, info = env.step(scheduler.next_action())
        history.append(frame_from_env(obs, keys))
        max_coverage = max(max_coverage, float(info["coverage"]))
        if terminated:
            success = True
        if terminated or truncated:
            break
    stats = scheduler.stats
    return {
        "success": success,
        "max_coverage": max_coverage,
        "seams": stats.seams,
        "inner": stats.inner,
        "starved": stats.starved,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="vla-train run or checkpoint dir")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--start-seed", type=int, default=100000)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--delays", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument(
        "--modes", nargs="+", default=["sync", "naive", "rtc"], help="subset to run (rows)"
    )
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: config)")
    parser.add_argument(
        "--execution-horizon", type=int, default=None, help="default n_action_steps"
    )
    parser.add_argument("--rtc-schedule", default="exp")
    parser.add_argument("--max-guidance-weight", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("pusht_rtc.json"))
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    policy = load_imf_policy(args.checkpoint)
    cfg = policy.config
    rtc = RTCConfig(args.rtc_schedule, args.max_guidance_weight)
    served = IMFServedPolicy(policy, IMFServeConfig(args.steps, rtc, args.seed))
    server = PolicyServer(served, ServerConfig(port=0))
    port = server.start()
    keys = [*cfg.lowdim_keys, *cfg.image_keys]
    obs_type = "pixels_agent_pos" if cfg.image_keys else "environment_state_agent_pos"
    env = gym.make("gym_pusht/PushT-v0", obs_type=obs_type, max_episode_steps=args.max_steps)
    horizon = args.execution_horizon or cfg.n_action_steps
    chunking = {
        mode: ChunkingConfig(mode, horizon, served.chunk_length)  # type: ignore[arg-type]
        for mode in ("sync", "naive", "rtc")
    }
    runs = [("sync", 0)] if "sync" in args.modes else []
    runs += [(m, d) for d in args.delays if d > 0 for m in ("naive", "rtc") if m in args.modes]
    results: list[dict[str, Any]] = []
    overheads: list[float] = []
    t0 = time.perf_counter()
    try:
        with PolicyClient(f"ws://127.0.0.1:{port}") as client:
            for mode, delay in runs:
                served.generator.manual_seed(args.seed)  # same sampler noise stream per run
                episodes = [
                    run_episode(
                        env,
                        client,
                        seed=args.start_seed + i,
                        mode=mode,
                        delay=delay,
                        keys=keys,
                        n_obs_steps=cfg.n_obs_steps,
                        chunking=chunking[mode],
                        max_steps=args.max_steps,
                        overheads=overheads,
                    )
                    for i in range(args.episodes)
                ]
                seams = [s for e in episodes for s in e["seams"]]
                inner = [s for e in episodes for s in e["inner"]]
                row = {
                    "mode": mode,
                    "delay": delay,
                    "success_rate": float(np.mean([e["success"] for e in episodes])),
                    "mean_max_coverage": float(np.mean([e["max_coverage"] for e in episodes])),
                    "mean_seam_delta": float(np.mean(seams)) if seams else float("nan"),
                    "mean_inner_delta": float(np.mean(inner)) if inner else float("nan"),
                    "starved_steps": int(sum(e["starved"] for e in episodes)),
                }
                results.append(row)
                print(json.dumps(row), flush=True)
    finally:
        server.stop()
        env.close()
    overhead = {
        "median_ms": statistics.median(overheads),
        "p90_ms": float(np.percentile(overheads, 90)),
        "calls": len(overheads),
    }
    print(
        f"\n{args.episodes} episodes/run, policy {args.checkpoint}, steps {served.metadata()['num_inference_steps']}"
    )
    print(
        "| mode | d | success | mean max coverage | seam ‖Δa‖ | in-chunk ‖Δa‖ | seam / in-chunk |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        ratio = r["mean_seam_delta"] / r["mean_inner_delta"]  # nan when a run has no seams
        print(
            f"| {r['mode']} | {r['delay'] if r['mode'] != 'sync' else 'any'} | "
            f"{r['success_rate']:.2f} | {r['mean_max_coverage']:.3f} | "
            f"{r['mean_seam_delta']:.2f} | {r['mean_inner_delta']:.2f} | {ratio:.2f} |"
        )
    print(
        f"\nserver overhead (round trip - infer_ms), batch 1, loopback: median "
        f"{overhead['median_ms']:.2f} ms, p90 {overhead['p90_ms']:.2f} ms over {overhead['calls']} calls"
    )
    payload = {
        "checkpoint": str(args.checkpoint),
        "args": {k: str(v) for k, v in vars(args).items()},
        "results": results,
        "server_overhead": overhead,
        "wall_s": time.perf_counter() - t0,
    }
    args.out.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
