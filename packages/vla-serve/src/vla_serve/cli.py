"""`vla-serve serve imf|pi0 ...` and `vla-serve client ...`."""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from vla_core.rtc import PREFIX_SCHEDULES, RTCConfig
from vla_serve.chunking import EXECUTION_MODES, ChunkingConfig
from vla_serve.imf_policy import IMFServeConfig, IMFServedPolicy, load_imf_policy
from vla_serve.normalization import load_norm_stats
from vla_serve.pi0_policy import PI0ServeConfig, PI0ServedPolicy, load_pi0
from vla_serve.runner import AsyncChunkRunner
from vla_serve.server import PolicyServer, ServedPolicy, ServerConfig
from vla_serve.transport import PolicyClient


def _add_server_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rtc-schedule", choices=PREFIX_SCHEDULES, default="exp")
    parser.add_argument("--max-guidance-weight", type=float, default=5.0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla-serve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve a policy over openpi's websocket protocol")
    kinds = serve.add_subparsers(dest="kind", required=True)
    imf = kinds.add_parser("imf", help="a vla-imf checkpoint or vla-train run directory")
    imf.add_argument("checkpoint")
    imf.add_argument("--steps", type=int, default=None, help="sampler steps (default: config)")
    imf.add_argument("--no-ema", action="store_true", help="model.safetensors, not ema")
    _add_server_args(imf)
    pi0 = kinds.add_parser("pi0", help="a vla-core pi0 / pi0.5 model")
    pi0.add_argument("--config", required=True, help="vla-core config.json")
    pi0.add_argument("--weights", required=True, help="safetensors file")
    pi0.add_argument("--layout", default="vla", choices=["vla", "openpi", "lerobot"])
    pi0.add_argument("--norm-stats", required=True, help="openpi norm_stats.json")
    pi0.add_argument("--cameras", required=True, help="comma-separated camera names")
    pi0.add_argument("--steps", type=int, default=10)
    _add_server_args(pi0)

    client = commands.add_parser(
        "client", help="run the async chunk loop against a server with dummy observations"
    )
    client.add_argument("--uri", default="ws://127.0.0.1:8000")
    client.add_argument("--mode", choices=EXECUTION_MODES, default="rtc")
    client.add_argument("--hz", type=float, default=10.0, help="control rate")
    client.add_argument("--steps", type=int, default=100, help="control steps to run")
    client.add_argument("--execution-horizon", type=int, default=None)
    client.add_argument("--initial-delay", type=int, default=0)
    return parser


def _served_policy(args: argparse.Namespace) -> ServedPolicy:
    rtc = RTCConfig(args.rtc_schedule, args.max_guidance_weight)
    if args.kind == "imf":
        policy = load_imf_policy(args.checkpoint, use_ema=not args.no_ema, device=args.device)
        return IMFServedPolicy(policy, IMFServeConfig(args.steps, rtc, args.seed))
    model = load_pi0(args.config, args.weights, layout=args.layout, device=args.device)
    stats = load_norm_stats(args.norm_stats, quantile=model.config.variant == "pi05")
    cameras = tuple(name for name in args.cameras.split(",") if name)
    return PI0ServedPolicy(model, stats, cameras, PI0ServeConfig(args.steps, rtc, args.seed))


def dummy_observation(metadata: dict[str, Any]) -> dict[str, Any]:
    """Zeros shaped as the server's `observation_shapes` metadata (vla-imf servers)."""
    shapes = metadata.get("observation_shapes")
    if not isinstance(shapes, dict):
        raise ValueError("server metadata has no 'observation_shapes'; dummy client needs it")
    return {key: np.zeros(shape, np.float32) for key, shape in shapes.items()}


def run_client(args: argparse.Namespace) -> dict[str, Any]:
    with PolicyClient(args.uri) as client:
        metadata = client.metadata
        length = int(metadata["chunk_length"])
        horizon = args.execution_horizon or int(metadata.get("action_horizon", length))
        config = ChunkingConfig(args.mode, horizon, length)
        runner = AsyncChunkRunner(client.infer, config, initial_delay=args.initial_delay)
        observation = dummy_observation(metadata)
        period = 1.0 / args.hz
        next_tick = time.perf_counter()
        for _ in range(args.steps):
            runner.step(observation)
            next_tick += period
            time.sleep(max(0.0, next_tick - time.perf_counter()))
    stats = runner.scheduler.stats
    infer_ms = [t["infer_ms"] for t in runner.server_timing]
    return {
        "mode": args.mode,
        "requests": stats.requests,
        "chunks": len(stats.delays),
        "delays_steps": stats.delays,
        "mean_seam_delta": statistics.fmean(stats.seams) if stats.seams else None,
        "starved_steps": stats.starved,
        "median_infer_ms": statistics.median(infer_ms) if infer_ms else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.command == "serve":
        torch.manual_seed(args.seed)
        policy = _served_policy(args)
        PolicyServer(policy, ServerConfig(args.host, args.port)).serve_forever()
        return 0
    print(json.dumps(run_client(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
