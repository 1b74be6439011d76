"""Train-step time: vanilla vs attnres_full vs attnres_block at equal width and depth.

Runs each backbone's full `IMFPolicy` step (loss + backward + AdamW) for the iMF and the
flow-matching objective, round-robin so machine load hits every variant alike; reports medians
and ratios to vanilla. Usage:

    OMP_NUM_THREADS=1 uv run python packages/vla-imf/benchmarks/train_step.py --out /tmp/imf_train_step.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import pusht_policy, round_robin_median_s, write_result

from vla_imf import IMFPolicy
from vla_imf._testing import random_batch

BACKBONES = ("vanilla", "attnres_full", "attnres_block")
OBJECTIVES = ("imf", "flow_matching")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-emb", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/vla_imf_train_step.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    runs = {}
    for backbone in BACKBONES:
        for objective in OBJECTIVES:
            policy = pusht_policy(
                backbone=backbone,
                objective=objective,
                horizon=args.horizon,
                n_obs_steps=2,
                n_action_steps=8,
                n_emb=args.n_emb,
                n_layer=args.n_layer,
                n_head=args.n_head,
                p_drop_attn=0.0,
                attnres_block_size=4,
            )
            optimizer = policy.configure_optimizers()
            batch = random_batch(policy.config, batch=args.batch)
            params = sum(p.numel() for p in policy.backbone.parameters())
            runs[(backbone, objective)] = (policy, optimizer, batch, params)

    def step(policy: IMFPolicy, optimizer: torch.optim.Optimizer, batch: dict) -> None:
        loss = policy.compute_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    calls = {key: (lambda r=run: step(*r[:3])) for key, run in runs.items()}
    median_ms = {
        key: 1000 * s for key, s in round_robin_median_s(calls, args.warmup, args.repeats).items()
    }

    rows = []
    header = (
        "| backbone | params | flow-matching step (ms) | iMF step (ms) | iMF / FM "
        "| FM vs vanilla | iMF vs vanilla |"
    )
    print(
        f"train step, batch {args.batch}, horizon {args.horizon}, n_emb {args.n_emb}, "
        f"n_layer {args.n_layer}, n_head {args.n_head}, n_kv_head 1, threads {args.threads}, "
        f"median of {args.repeats}"
    )
    print(header)
    print("|---|---|---|---|---|---|---|")
    for backbone in BACKBONES:
        fm = median_ms[(backbone, "flow_matching")]
        imf = median_ms[(backbone, "imf")]
        row = {
            "backbone": backbone,
            "params": runs[(backbone, "imf")][3],
            "flow_matching_ms": fm,
            "imf_ms": imf,
            "imf_over_fm": imf / fm,
            "fm_vs_vanilla": fm / median_ms[("vanilla", "flow_matching")],
            "imf_vs_vanilla": imf / median_ms[("vanilla", "imf")],
        }
        rows.append(row)
        print(
            f"| {backbone} | {row['params']:,} | {fm:.1f} | {imf:.1f} | {row['imf_over_fm']:.2f} "
            f"| {row['fm_vs_vanilla']:.2f} | {row['imf_vs_vanilla']:.2f} |"
        )
    write_result(args.out, args, rows)


if __name__ == "__main__":
    main()
