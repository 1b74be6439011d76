"""Action latency: iMF 1-step vs flow-matching 10-step vs 100-step on the same backbone.

Times `IMFPolicy.predict_action` (observation encoding + sampling + unnormalising, batch 1 by
default) round-robin across the three samplers, per backbone; reports medians and ratios to the
1-step iMF policy. Usage:

    OMP_NUM_THREADS=1 uv run python packages/vla-imf/benchmarks/action_latency.py --out /tmp/imf_latency.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from vla_imf import IMFPolicy, IMFPolicyConfig
from vla_imf._testing import pusht_stats, random_batch

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
        policies = {}
        for objective, steps in SAMPLERS:
            cfg = IMFPolicyConfig(
                backbone=backbone,  # type: ignore[arg-type]
                objective=objective,  # type: ignore[arg-type]
                num_inference_steps=steps,
                lowdim_keys=("observation.state", "observation.environment_state"),
                n_emb=args.n_emb,
                n_layer=args.n_layer,
                n_head=args.n_head,
                n_kv_head=1,
            )
            policy = IMFPolicy(cfg).eval()
            policy.fit_normalizer(pusht_stats(cfg))
            policies[(objective, steps)] = (policy, random_batch(cfg, batch=args.batch))

        def run(key: tuple[str, int], policies: dict = policies) -> float:
            policy, obs = policies[key]
            start = time.perf_counter()
            policy.predict_action(obs)
            return time.perf_counter() - start

        for key in policies:
            run(key)  # warm-up
        times: dict[tuple[str, int], list[float]] = {key: [] for key in policies}
        for _ in range(args.repeats):
            for key in policies:
                times[key].append(run(key))
        base = statistics.median(times[("imf", 1)])
        for (objective, steps), values in times.items():
            median = statistics.median(values)
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
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
