"""Action latency: iMF 1-step vs flow-matching 10-step vs 100-step on the same backbone.

Times `IMFPolicy.predict_action` (observation encoding + sampling + unnormalising, batch 1 by
default) round-robin across the three samplers, per backbone; reports medians and ratios to the
1-step iMF policy. Usage:

    OMP_NUM_THREADS=1 uv run python packages/vla-imf/benchmarks/action_latency.py --out /tmp/imf_latency.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import pusht_policy, round_robin_median_s, write_result

from vla_imf._testing import random_batch

SAMPLERS = (("imf", 1), ("flow_matching", 10), ("flow_matching", 100))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="attnres_full,vanilla")
    parser.add_argument("--n-emb", type=int, default=256)
    parser.add_argument("--n-layer", type=int, default=8)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/vla_imf_action_latency.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    print(
        f"predict_action latency, batch {args.batch}, horizon 16, n_emb {args.n_emb}, "
        f"n_layer {args.n_layer}, n_head {args.n_head}, threads {args.threads}, "
        f"median of {args.repeats}"
    )
    print("| backbone | sampler | NFE | latency (ms) | vs iMF 1-step |")
    print("|---|---|---|---|---|")
    for backbone in args.backbones.split(","):
        calls = {}
        for objective, steps in SAMPLERS:
            policy = pusht_policy(
                backbone=backbone,
                objective=objective,
                num_inference_steps=steps,
                n_emb=args.n_emb,
                n_layer=args.n_layer,
                n_head=args.n_head,
            ).eval()
            obs = random_batch(policy.config, batch=args.batch)
            calls[(objective, steps)] = lambda p=policy, o=obs: p.predict_action(o)
        medians = round_robin_median_s(calls, warmup=1, repeats=args.repeats)
        base = medians[("imf", 1)]
        for (objective, steps), median in medians.items():
            label = "iMF 1-step" if objective == "imf" else f"flow matching {steps}-step Euler"
            rows.append(
                {
                    "backbone": backbone,
                    "sampler": label,
                    "nfe": steps,
                    "latency_ms": 1000 * median,
                    "ratio_to_imf_1_step": median / base,
                }
            )
            print(f"| {backbone} | {label} | {steps} | {1000 * median:.2f} | {median / base:.1f} |")
    write_result(args.out, args, rows)


if __name__ == "__main__":
    main()
