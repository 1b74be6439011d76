"""`sample_actions` latency of one reduced-width pi0.5, unpruned vs LightVLA-pruned, in one run.

The same model and observation are timed with no filter and with `vla_prune.ImageTokenPruner` in
three settings (plain union, `min_keep` per camera, `keep_ratio` per camera). The pruner's own time
is measured with forward hooks, so its overhead can be read against the latency it saves.

    OMP_NUM_THREADS=2 uv run python packages/vla-train/benchmarks/pruned_sampling.py --out /tmp/vla_pruned_sampling.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from vla_core import GemmaConfig, JointEngineConfig, PI0Config, PI0Model, SiglipConfig
from vla_core._testing import perturb_adarms, random_observation
from vla_prune import ImageTokenPruner, PrunerConfig
from vla_train.atomic import atomic_write_json

# Reduced widths with the real structure: 3 cameras x 256 patches at 224² + 48 prompt tokens.
BACKBONE = GemmaConfig(
    width=256, depth=4, mlp_dim=1024, num_heads=8, num_kv_heads=1, head_dim=32, vocab_size=1024
)
EXPERT = GemmaConfig(
    width=128, depth=4, mlp_dim=512, num_heads=8, num_kv_heads=1, head_dim=32, vocab_size=1024
)
VISION = SiglipConfig(width=64, depth=2, mlp_dim=128, num_heads=2, patch_size=14, image_size=224)
NUM_CAMERAS = 3

SETTINGS: dict[str, PrunerConfig | None] = {
    "unpruned": None,
    "union (reference)": PrunerConfig(),
    "min_keep=16 per camera": PrunerConfig(
        min_keep=16, budget_scope="per_camera", num_cameras=NUM_CAMERAS
    ),
    "keep_ratio=0.1 per camera": PrunerConfig(
        keep_ratio=0.1, budget_scope="per_camera", num_cameras=NUM_CAMERAS
    ),
}


class PrunerClock:
    """Accumulates wall time spent inside a module's forward (forward pre/post hooks)."""

    def __init__(self, module: nn.Module) -> None:
        self.seconds = 0.0
        self.kept: list[int] = []
        self._start = 0.0
        module.register_forward_pre_hook(self._before)
        module.register_forward_hook(self._after)

    def _before(self, module: nn.Module, args: tuple) -> None:
        self._start = time.perf_counter()

    def _after(self, module: nn.Module, args: tuple, output: tuple) -> None:
        self.seconds += time.perf_counter() - self._start
        self.kept += [int(n) for n in output[1].sum(dim=1)]


def build_model(seed: int) -> PI0Model:
    torch.manual_seed(seed)
    engine = JointEngineConfig(backbone=BACKBONE, expert=EXPERT, attention_implementation="sdpa")
    config = PI0Config(
        variant="pi05",
        engine=engine,
        vision=VISION,
        action_dim=32,
        action_horizon=50,
        max_token_len=48,
        num_cameras=NUM_CAMERAS,
    )
    model = PI0Model(config)
    perturb_adarms(model)  # a zero-initialised AdaRMS would hide any effect of the shorter prefix
    return model.eval()


def time_setting(model: PI0Model, obs, noise, pruner_config, args) -> dict:
    clock = None
    if pruner_config is not None:
        pruner = ImageTokenPruner(BACKBONE.width, pruner_config).eval()
        clock = PrunerClock(pruner)
        model.set_image_token_filter(pruner)
    else:
        model.set_image_token_filter(None)
    actions = model.sample_actions(obs, noise=noise, num_steps=args.steps)  # warm-up
    latencies = []
    if clock is not None:
        clock.seconds, clock.kept = 0.0, []
    for _ in range(args.repeats):
        start = time.perf_counter()
        model.sample_actions(obs, noise=noise, num_steps=args.steps)
        latencies.append(time.perf_counter() - start)
    image_tokens = NUM_CAMERAS * (VISION.image_size // VISION.patch_size) ** 2
    kept = clock.kept if clock is not None else [image_tokens] * args.batch
    return {
        "latency_ms": 1e3 * statistics.median(latencies),
        "pruner_ms": 0.0 if clock is None else 1e3 * clock.seconds / args.repeats,
        "kept_mean": statistics.mean(kept),
        "kept_min": min(kept),
        "kept_max": max(kept),
        "prefix_len": statistics.mean(kept) + model.config.max_token_len,
        "actions_finite": bool(torch.isfinite(actions).all()),
        "actions": actions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "vla_pruned.json"))
    args = parser.parse_args()

    model = build_model(args.seed)
    obs = random_observation(model.config, batch_size=args.batch, seed=args.seed)
    noise = torch.randn(
        args.batch, model.config.action_horizon, model.config.action_dim,
        generator=torch.Generator().manual_seed(args.seed),
    )  # fmt: skip
    with torch.inference_mode():
        results = {
            name: time_setting(model, obs, noise, cfg, args) for name, cfg in SETTINGS.items()
        }

    base = results["unpruned"]
    header = (
        f"{'setting':28s} {'kept mean/min/max':>18s} {'prefix':>7s} {'latency ms':>11s} "
        f"{'× unpruned':>10s} {'pruner ms':>10s} {'pruner ÷ saved':>14s} {'max|Δa|':>8s}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        saved = base["latency_ms"] - r["latency_ms"]
        r["ratio_vs_unpruned"] = r["latency_ms"] / base["latency_ms"]
        r["pruner_over_saved"] = r["pruner_ms"] / saved if saved > 0 else float("nan")
        r["max_action_diff_vs_unpruned"] = float((r["actions"] - base["actions"]).abs().max())
        kept = f"{r['kept_mean']:.1f}/{r['kept_min']}/{r['kept_max']}"
        print(
            f"{name:28s} {kept:>18s} {r['prefix_len']:7.1f} {r['latency_ms']:11.1f} "
            f"{r['ratio_vs_unpruned']:10.3f} {r['pruner_ms']:10.1f} "
            f"{r['pruner_over_saved']:14.3f} {r['max_action_diff_vs_unpruned']:8.3f}"
        )
    payload = {
        "command": "benchmarks/pruned_sampling.py",
        "args": vars(args),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "results": {
            name: {k: v for k, v in r.items() if k != "actions"} for name, r in results.items()
        },
    }
    out = Path(args.out)
    atomic_write_json(out, payload, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
