"""Server overhead at batch 1 on loopback: client round trip minus the server's own `infer_ms`.

Serves a vla-imf checkpoint in-process and calls it `--calls` times with one PushT observation,
through vla-serve's `PolicyClient` (the same wire as openpi-client). Overhead = msgpack encode /
decode on both sides + websocket framing + the event loop hop to the inference thread.

    uv run --package vla-serve python packages/vla-serve/benchmarks/server_overhead.py \
        --checkpoint /tmp/wt20_runs/fm_attnres_emb64_layer2_seed42
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from vla_serve import (
    IMFServeConfig,
    IMFServedPolicy,
    PolicyClient,
    PolicyServer,
    ServerConfig,
    load_imf_policy,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("server_overhead.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    served = IMFServedPolicy(load_imf_policy(args.checkpoint), IMFServeConfig())
    server = PolicyServer(served, ServerConfig(port=0))
    port = server.start()
    shapes = served.metadata()["observation_shapes"]
    rng = np.random.default_rng(0)
    observation = {k: rng.uniform(0, 512, shape).astype(np.float32) for k, shape in shapes.items()}
    round_trip, infer, overhead = [], [], []
    try:
        with PolicyClient(f"ws://127.0.0.1:{port}") as client:
            for i in range(args.warmup + args.calls):
                tic = time.perf_counter()
                reply = client.infer(observation)
                total = (time.perf_counter() - tic) * 1000
                if i >= args.warmup:
                    round_trip.append(total)
                    infer.append(reply["server_timing"]["infer_ms"])
                    overhead.append(total - reply["server_timing"]["infer_ms"])
    finally:
        server.stop()
    row = {
        "checkpoint": args.checkpoint,
        "calls": args.calls,
        "round_trip_ms_median": statistics.median(round_trip),
        "infer_ms_median": statistics.median(infer),
        "overhead_ms_median": statistics.median(overhead),
        "overhead_ms_p90": float(np.percentile(overhead, 90)),
        "overhead_share_of_round_trip": statistics.median(overhead) / statistics.median(round_trip),
    }
    print(
        "| round trip (ms, median) | model infer_ms (median) | overhead median | overhead p90 | overhead / round trip |"
    )
    print("|---|---|---|---|---|")
    print(
        f"| {row['round_trip_ms_median']:.2f} | {row['infer_ms_median']:.2f} | "
        f"{row['overhead_ms_median']:.2f} | {row['overhead_ms_p90']:.2f} | "
        f"{row['overhead_share_of_round_trip']:.2f} |"
    )
    args.out.write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
