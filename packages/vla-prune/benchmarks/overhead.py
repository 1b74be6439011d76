"""Pruner overhead vs the prefix compute it saves, measured side by side in one run.

The pruner runs once per inference on the full pi0-like prefix (3×256 patches, 48 prompt
tokens, width 2048). What it saves is every prefix layer's work on the removed tokens. We time
one Gemma-2B-shaped decoder layer (8 query heads × 256, 1 KV head, gated-GELU MLP 16384, random
weights) at the unpruned and at each pruned prefix length, split into its attention block
(norm + q/k/v/o projections + SDPA) and the whole layer, and scale by the layer count (18; all
layers have identical shapes). FLOPs come from torch.utils.flop_counter.

    OMP_NUM_THREADS=1 uv run python packages/vla-prune/benchmarks/overhead.py
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from pi0_like import make_pi0_like_prefix
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from vla_prune import ImageTokenPruner, PrunerConfig


class GemmaLikeLayer(nn.Module):
    """Pre-norm decoder layer with Gemma-2B shapes (no RoPE: it does not change the cost much)."""

    def __init__(self, width: int, heads: int, head_dim: int, kv_heads: int, mlp: int) -> None:
        super().__init__()
        self.heads, self.head_dim, self.kv_heads = heads, head_dim, kv_heads
        self.q = nn.Linear(width, heads * head_dim, bias=False)
        self.k = nn.Linear(width, kv_heads * head_dim, bias=False)
        self.v = nn.Linear(width, kv_heads * head_dim, bias=False)
        self.o = nn.Linear(heads * head_dim, width, bias=False)
        self.gate_up = nn.Linear(width, 2 * mlp, bias=False)
        self.down = nn.Linear(mlp, width, bias=False)
        self.norm1, self.norm2 = nn.RMSNorm(width), nn.RMSNorm(width)

    def attention(self, x: Tensor) -> Tensor:  # [B, P, D] -> [B, P, D]
        b, p, _ = x.shape
        h = self.norm1(x)
        q = self.q(h).view(b, p, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(h).view(b, p, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(h).view(b, p, self.kv_heads, self.head_dim).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return x + self.o(a.transpose(1, 2).reshape(b, p, -1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.attention(x)
        gate, up = self.gate_up(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down(F.gelu(gate, approximate="tanh") * up)


def _time_ms(fns: dict[str, Callable[[], object]], reps: int, device: torch.device) -> dict:
    """Min wall time (ms) of each function over `reps` rounds, interleaved round-robin so that
    load drift on a shared machine hits every candidate alike; min is the least noisy statistic."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for fn in fns.values():  # warm-up
        fn()
    sync()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], 1e3 * (time.perf_counter() - t0))
    return best


def _gflop(fn: Callable[[], object]) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kept", type=str, default="78,128,256", help="image tokens kept")
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=256)
    parser.add_argument("--kv-heads", type=int, default=1)
    parser.add_argument("--mlp", type=int, default=16384)
    parser.add_argument("--layers", type=int, default=18)
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--prompt-len", type=int, default=48)
    parser.add_argument("--reps", type=int, default=7, help="rounds for pruner / attention")
    parser.add_argument("--layer-reps", type=int, default=2, help="rounds for whole layers")
    parser.add_argument(
        "--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/vla_prune_overhead.json"))
    args = parser.parse_args()

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    prefix = make_pi0_like_prefix(
        1, num_cameras=args.cameras, width=args.width, prompt_len=args.prompt_len, seed=args.seed
    )
    image = prefix.image.to(device, dtype)
    image_mask = prefix.image_mask.to(device)
    language = prefix.language.to(device, dtype)
    language_mask = prefix.language_mask.to(device)
    n_img = image.shape[1]
    full = n_img + args.prompt_len
    layer = GemmaLikeLayer(args.width, args.heads, args.head_dim, args.kv_heads, args.mlp)
    layer = layer.to(device, dtype).eval()

    kept_list = [int(k) for k in args.kept.split(",")]
    pruners = {
        k: ImageTokenPruner(args.width, PrunerConfig(keep_tokens=k)).eval() for k in kept_list
    }
    union = ImageTokenPruner(args.width).eval()
    xs = {
        p: torch.randn(1, p, args.width, device=device, dtype=dtype)
        for p in [full] + [k + args.prompt_len for k in kept_list]
    }
    inputs = (image, image_mask, language, language_mask)
    with torch.inference_mode():
        prune_fns: dict[str, Callable[[], object]] = {"union": lambda: union(*inputs)}
        prune_fns |= {f"keep{k}": (lambda m=m: m(*inputs)) for k, m in pruners.items()}
        attn_fns = {p: (lambda x=x: layer.attention(x)) for p, x in xs.items()}
        layer_fns = {p: (lambda x=x: layer(x)) for p, x in xs.items()}
        t_prune = _time_ms(
            {**prune_fns, **{f"attn{p}": f for p, f in attn_fns.items()}}, args.reps, device
        )
        t_layer = _time_ms(layer_fns, args.layer_reps, device)
        g_prune = _gflop(lambda: union(*inputs))
    meta_layer = GemmaLikeLayer(args.width, args.heads, args.head_dim, args.kv_heads, args.mlp)
    meta_layer = meta_layer.to("meta", dtype)
    g_layer = {
        p: _gflop(lambda p=p: meta_layer(torch.empty(1, p, args.width, device="meta", dtype=dtype)))
        for p in xs
    }

    t_union, t_attn_full, t_layer_full = t_prune["union"], t_prune[f"attn{full}"], t_layer[full]
    rows = []
    for k in kept_list:
        p = k + args.prompt_len
        saved_attn = args.layers * (t_attn_full - t_prune[f"attn{p}"])
        saved_layer = args.layers * (t_layer_full - t_layer[p])
        t_k = t_prune[f"keep{k}"]
        rows.append(
            {
                "kept": k,
                "prefix": p,
                "prune_ms": t_k,
                "prefix_ms_full": args.layers * t_layer_full,
                "prefix_ms_pruned": args.layers * t_layer[p],
                "saved_attention_ms": saved_attn,
                "saved_layers_ms": saved_layer,
                "prune_over_saved_attention": t_k / saved_attn,
                "prune_over_saved_layers": t_k / saved_layer,
                "prune_gflop": g_prune,
                "saved_gflop": args.layers * (g_layer[full] - g_layer[p]),
            }
        )

    print(
        f"device {device} ({args.dtype}), B=1, prefix {n_img} image + {args.prompt_len} prompt = "
        f"{full} tokens, {args.layers} Gemma-2B-shaped layers (width {args.width}, MLP {args.mlp})"
    )
    print(
        f"pruner (union mode) {t_union:.1f} ms, {g_prune:.2f} GFLOP; one layer at {full} tokens: "
        f"attention {t_attn_full:.1f} ms, whole layer {t_layer_full:.1f} ms"
    )
    header = (
        f"{'kept':>5s} {'prefix':>6s} {'prefix ms full':>14s} {'pruned':>8s} {'pruner ms':>9s} "
        f"{'saved attn ms':>13s} {'pruner/attn saved':>17s} {'saved layers ms':>15s} "
        f"{'pruner/saved':>12s} {'GFLOP pruner/saved':>18s}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['kept']:5d} {r['prefix']:6d} {r['prefix_ms_full']:14.1f} "
            f"{r['prefix_ms_pruned']:8.1f} {r['prune_ms']:9.1f} {r['saved_attention_ms']:13.1f} "
            f"{r['prune_over_saved_attention']:17.3f} {r['saved_layers_ms']:15.1f} "
            f"{r['prune_over_saved_layers']:12.3f} "
            f"{r['prune_gflop'] / r['saved_gflop']:18.4f}"
        )
    payload = {
        "benchmark": "vla_prune.overhead",
        "args": {k: str(v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "machine": platform.machine(),
        "device_name": torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor(),
        "pruner_union_ms": t_union,
        "layer_full_ms": t_layer_full,
        "attention_full_ms": t_attn_full,
        "rows": rows,
    }
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
