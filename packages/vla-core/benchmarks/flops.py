"""FLOPs of one pi0 / pi0.5 `sample_actions` call: closed form vs FlopCounterMode, side by side.

For each setting it builds the full-size model on the meta device (no memory, no compute), counts
`sample_actions` with `torch.utils.flop_counter.FlopCounterMode`, and prints the measured total,
the closed form (`vla_core.analytic_flops`), their ratio, and the share of vision / prefix /
expert. The seed row also shows the reconstructed Understanding-PI0 profiler total against the
published 4,354,614,038,072. FLOPs = 2·MACs. Writes JSON to --out.

    OMP_NUM_THREADS=1 uv run python packages/vla-core/benchmarks/flops.py
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from vla_core import (
    PI0Config,
    analytic_flops,
    measure_sample_actions_flops,
    profiler_matched_flops,
    published_flops_config,
)

PUBLISHED_SEED_TOTAL = 4_354_614_038_072


def settings() -> dict[str, tuple[PI0Config, int | None]]:
    """name -> (config, prompt tokens); 10 flow steps, batch 1 throughout."""
    seed = published_flops_config()
    return {
        "pi0 seed (3 cams, 48 tok, act 16)": (seed, None),
        "pi0 2 cams (LIBERO)": (seed.replace(num_cameras=2), None),
        "pi0 openpi (3 cams, 48 tok, act 32)": (PI0Config(), None),
        "pi0.5 openpi (3 cams, 200 tok, act 32)": (PI0Config(variant="pi05"), None),
        "pi0 3 cams, empty prompt": (seed, 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("/tmp/vla_core_flops.json"))
    args = parser.parse_args()

    rows = []
    for name, (config, prompt) in settings().items():
        start = time.perf_counter()
        measured = measure_sample_actions_flops(config, num_steps=args.steps, prompt_tokens=prompt)
        seconds = time.perf_counter() - start
        closed = analytic_flops(config, num_steps=args.steps, prompt_tokens=prompt)
        rows.append(
            {
                "setting": name,
                "prefix_tokens": closed.prefix_tokens,
                "suffix_tokens": closed.suffix_tokens,
                "measured_flops": measured.total,
                "analytic_flops": closed.total,
                "measured_over_analytic": measured.total / closed.total,
                "vision_share": closed.vision / closed.total,
                "prefix_share": closed.prefix / closed.total,
                "expert_share": closed.expert / closed.total,
                "count_seconds": seconds,
            }
        )
    profile = profiler_matched_flops(num_steps=args.steps)

    header = (
        f"{'setting':<40} {'P':>4} {'S':>3} {'measured GFLOP':>15} {'analytic GFLOP':>15} "
        f"{'meas/anal':>10} {'vision':>7} {'prefix':>7} {'expert':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['setting']:<40} {row['prefix_tokens']:>4} {row['suffix_tokens']:>3} "
            f"{row['measured_flops'] / 1e9:>15.2f} {row['analytic_flops'] / 1e9:>15.2f} "
            f"{row['measured_over_analytic']:>10.6f} {row['vision_share']:>7.1%} "
            f"{row['prefix_share']:>7.1%} {row['expert_share']:>7.1%}"
        )
    print()
    print(
        f"seed profiler reconstruction: {profile['total']:,} vs published "
        f"{PUBLISHED_SEED_TOTAL:,} (ratio {profile['total'] / PUBLISHED_SEED_TOTAL:.9f}); "
        f"full count incl. SigLIP attention + patch conv: {rows[0]['analytic_flops']:,} "
        f"(x{rows[0]['analytic_flops'] / PUBLISHED_SEED_TOTAL:.4f})"
    )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "vla-core flops",
        "steps": args.steps,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "rows": rows,
        "seed_profiler": profile,
        "published_seed_total": PUBLISHED_SEED_TOTAL,
    }
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
