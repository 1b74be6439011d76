"""Side-by-side PushT low-dim comparison on the same data and training budget:
iMF-AttnRes-full (1 step) vs iMF-vanilla (1 step) vs flow matching on AttnRes (10 steps).

Each policy is trained by the real trainer (`vla_train.loop.train`), evaluated on the same
seeded gym-pusht episodes with its EMA weights, and timed for one batch-1 action prediction.
Prints one table (ratios relative to the flow-matching baseline) and writes JSON to --out.

    uv run python packages/vla-train/benchmarks/compare_policies.py --steps 1500 --n-test 50
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vla_train._testing import load_config
from vla_train.loop import train

POLICIES = (
    ("imf_attnres_full", "iMF AttnRes-full, 1 step"),
    ("imf_vanilla", "iMF vanilla, 1 step"),
    ("flow_matching", "FM AttnRes-full, 10 steps"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--n-test", type=int, default=50)
    parser.add_argument("--n-emb", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--policies", nargs="+", default=[p for p, _ in POLICIES])
    parser.add_argument("--out", type=Path, default=Path("/tmp/vla_train_compare.json"))
    parser.add_argument("--runs", type=Path, default=Path("/tmp/vla_train_compare_runs"))
    args = parser.parse_args()

    labels = dict(POLICIES)
    rows = []
    for policy in args.policies:
        cfg = load_config(
            [
                f"policy={policy}",
                f"policy.n_emb={args.n_emb}",
                f"policy.n_layer={args.n_layer}",
                f"train.max_steps={args.steps}",
                f"train.checkpoint_every_steps={args.steps}",
                "train.progress_bar=false",
                f"eval.n_test={args.n_test}",
                f"seed={args.seed}",
                f"device={args.device}",
                "logger=none",
            ]
        )
        tic = time.perf_counter()
        m = train(cfg, args.runs / cfg.run_name)
        rows.append(
            {
                "policy": policy,
                "label": labels.get(policy, policy),
                "nfe": m["policy"]["num_inference_steps"],
                "params": m["policy"]["num_parameters"],
                "success_rate": m["eval"]["success_rate"],
                "mean_max_coverage": m["eval"]["mean_max_coverage"],
                "mean_score": m["eval"]["mean_score"],
                "latency_ms": m["action_latency_ms_batch1"],
                "train_s": m["train_wall_s"],
                "final_loss": m["final_loss"],
                "wall_s": time.perf_counter() - tic,
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    base = next((r for r in rows if r["policy"] == "flow_matching"), rows[-1])
    header = (
        f"| policy | NFE | params | success | max-coverage | score | latency ms "
        f"| latency vs {base['policy']} | train s |"
    )
    print(
        f"\nPushT low-dim, {args.steps} steps, n_emb {args.n_emb}, {args.n_layer} layers, "
        f"{args.n_test} test episodes, seed {args.seed}\n"
    )
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['label']} | {r['nfe']} | {r['params']:,} | {r['success_rate']:.2f} "
            f"| {r['mean_max_coverage']:.3f} | {r['mean_score']:.3f} | {r['latency_ms']:.2f} "
            f"| {r['latency_ms'] / base['latency_ms']:.2f}x | {r['train_s']:.0f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"args": vars(args) | {"out": str(args.out), "runs": str(args.runs)}, "rows": rows},
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
