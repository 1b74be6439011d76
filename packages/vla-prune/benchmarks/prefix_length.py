"""Prefix length after pruning a pi0-like prefix (3 cameras × 256 patches + 48 prompt tokens).

Runs every pruner configuration on the same samples (see pi0_like.py for the distribution) and
prints kept image tokens (mean/min/max; in train mode: distinct patches in the N slots, i.e.
what LightVLA's noisy training selection exposes), the resulting prefix length as a ratio of the unpruned
816, the LightVLA union size, the top-1 vote share (collapse indicator) and the share of salient
object patches kept (recall) and the share of kept tokens that are object patches (precision).
Writes JSON to --out.

    OMP_NUM_THREADS=1 uv run python packages/vla-prune/benchmarks/prefix_length.py
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from pi0_like import make_pi0_like_prefix
from torch import nn

from vla_prune import GridPoolPruner, ImageTokenPruner, PrunerConfig, RandomKPruner


def configurations(width: int, cams: int) -> dict[str, tuple[nn.Module, torch.dtype]]:
    f32, bf16 = torch.float32, torch.bfloat16

    def lightvla(dtype: torch.dtype = f32, **kw: object) -> tuple[nn.Module, torch.dtype]:
        return ImageTokenPruner(width, PrunerConfig(**kw)).eval(), dtype  # type: ignore[arg-type]

    def train_mode(noise: float) -> tuple[nn.Module, torch.dtype]:
        pruner = ImageTokenPruner(width).train()
        pruner.set_noise_scale(noise)
        return pruner, f32

    return {
        "reference (attends prompt padding)": lightvla(mask_task_padding=False),
        "default (task mask)": lightvla(),
        "default, bf16 inputs": lightvla(bf16),
        "default, bf16 inputs, fp32_scores": lightvla(bf16, fp32_scores=True),
        "train mode, noise_scale=1 (distinct)": train_mode(1.0),
        "train mode, noise_scale=0.5 (distinct)": train_mode(0.5),
        "min_keep=64 pooled": lightvla(min_keep=64),
        "min_keep=16 per camera": lightvla(
            min_keep=16, budget_scope="per_camera", num_cameras=cams
        ),
        "keep_ratio=0.1 per camera": lightvla(
            keep_ratio=0.1, budget_scope="per_camera", num_cameras=cams
        ),
        "random-k 26 per camera": (
            RandomKPruner(26, cams, torch.Generator().manual_seed(0)).eval(),
            f32,
        ),
        "grid 2x2 mean pool": (GridPoolPruner(16, 2).eval(), f32),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--prompt-len", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/vla_prune_prefix_length.json"))
    args = parser.parse_args()

    n_img = args.cameras * 256
    full = n_img + args.prompt_len
    configs = configurations(args.width, args.cameras)
    kept: dict[str, list[torch.Tensor]] = {name: [] for name in configs}
    union: dict[str, list[torch.Tensor]] = {name: [] for name in configs}
    share: dict[str, list[torch.Tensor]] = {name: [] for name in configs}
    recall: dict[str, list[torch.Tensor]] = {name: [] for name in configs}
    precision: dict[str, list[torch.Tensor]] = {name: [] for name in configs}
    seconds = dict.fromkeys(configs, 0.0)
    salient_share: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, args.samples, args.batch):
            b = min(args.batch, args.samples - start)
            prefix = make_pi0_like_prefix(
                b,
                num_cameras=args.cameras,
                width=args.width,
                prompt_len=args.prompt_len,
                seed=args.seed + start,
            )
            salient_share.append(prefix.salient.float().mean(-1))
            for name, (module, dtype) in configs.items():
                t0 = time.perf_counter()
                _, kept_mask, keep_index = module(
                    prefix.image.to(dtype),
                    prefix.image_mask,
                    prefix.language.to(dtype),
                    prefix.language_mask,
                )
                seconds[name] += time.perf_counter() - t0
                # distinct patches present (train mode repeats a patch in several slots)
                present = torch.zeros_like(prefix.salient).scatter_(1, keep_index, kept_mask)
                count = present.sum(-1)
                kept[name].append(count)
                hit = (present & prefix.salient).sum(-1)
                recall[name].append(hit / prefix.salient.sum(-1))
                precision[name].append(hit / count.clamp(min=1))
                stats = getattr(module, "last_stats", None)
                if stats is not None:
                    union[name].append(stats.union_size)
                    share[name].append(stats.top_vote_share)

    base = torch.cat(salient_share).mean().item()
    rows = []
    for name in configs:
        k = torch.cat(kept[name]).float()
        row = {
            "config": name,
            "kept_mean": k.mean().item(),
            "kept_min": k.min().item(),
            "kept_max": k.max().item(),
            "prefix_mean": k.mean().item() + args.prompt_len,
            "prefix_ratio": (k.mean().item() + args.prompt_len) / full,
            "union_mean": torch.cat(union[name]).float().mean().item() if union[name] else None,
            "top_vote_share": torch.cat(share[name]).mean().item() if share[name] else None,
            "salient_recall": torch.cat(recall[name]).mean().item(),
            "salient_precision": torch.cat(precision[name]).mean().item(),
            "cpu_ms_per_sample": 1e3 * seconds[name] / args.samples,
        }
        rows.append(row)

    header = (
        f"{'configuration':38s} {'kept mean':>9s} {'min':>5s} {'max':>5s} {'prefix':>7s} "
        f"{'/ ' + str(full):>7s} {'union':>6s} {'top1 share':>10s} {'obj recall':>10s} "
        f"{'obj precision':>13s}"
    )
    print(
        f"{args.samples} pi0-like samples, {args.cameras}×256 image + {args.prompt_len} prompt "
        f"tokens (unpruned prefix {full}), width {args.width}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        u = f"{r['union_mean']:6.1f}" if r["union_mean"] is not None else f"{'—':>6s}"
        s = f"{r['top_vote_share']:10.3f}" if r["top_vote_share"] is not None else f"{'—':>10s}"
        print(
            f"{r['config']:38s} {r['kept_mean']:9.1f} {r['kept_min']:5.0f} {r['kept_max']:5.0f} "
            f"{r['prefix_mean']:7.1f} {r['prefix_ratio']:7.3f} {u} {s} {r['salient_recall']:10.3f} "
            f"{r['salient_precision']:13.3f}"
        )
    payload = {
        "benchmark": "vla_prune.prefix_length",
        "args": {k: str(v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "machine": platform.machine(),
        "unpruned_prefix": full,
        "salient_base_rate": base,
        "rows": rows,
    }
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(args.out)
    print(
        f"obj recall / precision: share of salient object patches kept / share of kept tokens that "
        f"are object patches (base rate {base:.3f}; grid pooling is scored at its window anchors)"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
