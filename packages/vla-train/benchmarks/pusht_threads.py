"""Training throughput of the PushT default vs torch's thread count, idle and under load.

Small models gain little from intra-op threads, and OpenMP's spin-waiting threads collapse when
another process competes for the cores. This times the default policy's training step (iMF
Full-AttnRes at the default's batch size, eager and compiled) with 1 and 2 threads, first on an otherwise idle
machine, then beside a CPU-bound competitor process (a busy loop), each in a fresh subprocess.
Prints one table of samples/s and the loaded / idle ratio; writes JSON to --out. Run it alone.

    uv run --package vla-train python packages/vla-train/benchmarks/pusht_threads.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from vla_train.data.layout import atomic_write_json

_CHILD = r"""
import json, sys, time, torch
threads, compile_, steps = int(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
torch.set_num_threads(threads)
from vla_imf import IMFPolicy
from vla_train._testing import load_config
from vla_imf._testing import random_batch
pusht = load_config([]).pusht
assert pusht is not None
policy = IMFPolicy(pusht.policy)
stats = {k: {"min": torch.zeros(d), "max": torch.full((d,), 512.0), "mean": torch.zeros(d),
             "std": torch.ones(d)} for k, d in (("observation.state", 2),
             ("observation.environment_state", 16), ("action", 2))}
policy.fit_normalizer(stats)
opt = policy.configure_optimizers(weight_decay=1e-3, learning_rate=1e-4, betas=(0.9, 0.95))
loss_fn = torch.compile(policy.compute_loss, dynamic=False) if compile_ else policy.compute_loss
size = load_config([]).train.batch_size  # the default's batch
batch = random_batch(policy.config, batch=size, generator=torch.Generator().manual_seed(0))
def step():
    loss = loss_fn(batch); opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
for _ in range(5): step()
tic = time.perf_counter()
for _ in range(steps): step()
print(json.dumps({"samples_per_s": size * steps / (time.perf_counter() - tic)}))
"""


def measure(threads: int, compiled: bool, steps: int, loaded: bool) -> float:
    competitor = None
    if loaded:
        competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)
    try:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(threads), str(int(compiled)), str(steps)],
            capture_output=True, text=True, check=True, env=env,
        )  # fmt: skip
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return float(json.loads(out.stdout.strip().splitlines()[-1])["samples_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--out", type=Path, default=Path("/tmp/vla_bench/pusht_threads.json"))
    args = parser.parse_args()
    rows = []
    for compiled in (False, True):
        for threads in (1, 2):
            idle = measure(threads, compiled, args.steps, loaded=False)
            loaded = measure(threads, compiled, args.steps, loaded=True)
            rows.append(
                {"threads": threads, "compiled": compiled, "idle_samples_per_s": idle,
                 "loaded_samples_per_s": loaded, "loaded_over_idle": loaded / idle}
            )  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nPushT default training step, {os.cpu_count()} cores; load = 1 busy process")
    print("| threads | compiled | idle samples/s | loaded samples/s | loaded / idle |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['threads']} | {r['compiled']} | {r['idle_samples_per_s']:.0f} | "
              f"{r['loaded_samples_per_s']:.0f} | {r['loaded_over_idle']:.2f} |")  # fmt: skip
    atomic_write_json(args.out, {"steps": args.steps, "rows": rows})


if __name__ == "__main__":
    main()
