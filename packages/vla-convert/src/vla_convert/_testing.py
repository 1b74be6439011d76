"""Random openpi-layout orbax checkpoints for tests and the benchmark.

openpi zero-initialises `img/head` and the pi0.5 adaRMS `Dense_0` layers; a fixture that kept those
zeros would hide wrong vision mappings and wrong LoRA merges (every pi0.5 expert block would be the
identity). Here every leaf is random with a moderate scale (std 0.05 for LoRA factors keeps fp32
rounding small while the adapters still move the weights visibly).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vla_convert.dims import GemmaDims, OpenpiDims, VisionDims, expected_leaves

__all__ = [
    "full_pi0_dims",
    "random_openpi_params",
    "tiny_dims",
    "write_openpi_checkpoint",
]


def tiny_dims(
    pi05: bool = False, lora_rank: int | None = None, fused_qkv: bool = False
) -> OpenpiDims:
    """Matches vla-core's `tiny_pi0_config`: backbone w48 / expert w32, 4 q / 2 kv heads x 16,
    N*H != width in the expert, SigLIP w32 x 2 layers (56^2 -> 16 patches), action 6, state 7.
    `fused_qkv` uses K == N == 4 (openpi then stores `qkv_einsum`)."""
    kv = 4 if fused_qkv else 2
    backbone = GemmaDims(48, 2, 96, 4, kv, 16, lora_rank, lora_rank)
    expert = GemmaDims(32, 2, 64, 4, kv, 16, lora_rank, lora_rank, 32 if pi05 else None)
    vision = VisionDims(
        width=32,
        depth=2,
        mlp_dim=64,
        num_heads=2,
        head_dim=16,
        patch_size=14,
        num_patches=16,
        out_width=48,
    )
    return OpenpiDims(
        pi05=pi05,
        vision=vision,
        paligemma=backbone,
        expert=expert,
        vocab_size=128,
        action_dim=6,
        state_dim=None if pi05 else 7,
    )


def full_pi0_dims(pi05: bool = False, lora: bool = True) -> OpenpiDims:
    """openpi's default `Pi0Config` (So400m/14 + gemma_2b + gemma_300m), optionally with the
    `gemma_2b_lora` (rank 16) / `gemma_300m_lora` (rank 32) adapters."""
    r0, r1 = (16, 32) if lora else (None, None)
    backbone = GemmaDims(2048, 18, 16_384, 8, 1, 256, r0, r0)
    expert = GemmaDims(1024, 18, 4096, 8, 1, 256, r1, r1, 1024 if pi05 else None)
    vision = VisionDims(1152, 27, 4304, 16, 72, 14, 256, 2048)
    return OpenpiDims(pi05, vision, backbone, expert, 257_152, 32, None if pi05 else 32)


def _std(key: str, shape: tuple[int, ...]) -> float:
    if "lora_" in key:
        return 0.05
    if key.endswith(("/scale", "/bias")):
        return 0.1
    if key.endswith("input_embedding") or key.endswith("pos_embedding"):
        return 0.5
    fan_in = shape[-2] if len(shape) >= 2 else shape[-1]
    if "attn_vec_einsum" in key or key.endswith("Attention_0/out/kernel"):
        fan_in = shape[-3] * shape[-2]  # (..., N, H, D)
    if key.endswith(("query/kernel", "key/kernel", "value/kernel")):
        fan_in = shape[-3]  # (L, D, N, H)
    if key.endswith("embedding/kernel"):
        fan_in = math.prod(shape[:3])
    return 1.0 / math.sqrt(fan_in)


def random_leaves(
    dims: OpenpiDims, seed: int = 0, dtype: Any = np.float32
) -> Iterator[tuple[str, np.ndarray]]:
    """(key, array) for every leaf of `dims`' tree, generated one at a time (bounded memory)."""
    rng = np.random.default_rng(seed)
    for key, shape in expected_leaves(dims).items():
        array = rng.standard_normal(shape, dtype=np.float32)
        array *= np.float32(_std(key, shape))
        if key.endswith("/scale") and ("LayerNorm" in key or "encoder_norm" in key):
            array += 1.0  # LayerNorm scales multiply directly (no 1+w): keep them near 1
        yield key, array.astype(dtype, copy=False)


def random_openpi_params(
    dims: OpenpiDims, seed: int = 0, dtype: Any = np.float32
) -> dict[str, np.ndarray]:
    """A complete random openpi parameter tree, flat (`/`-joined keys)."""
    return dict(random_leaves(dims, seed, dtype))


def _nest(flat: dict[str, np.ndarray], value_suffix: bool) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, array in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = {"value": array} if value_suffix else array
    return tree


def write_openpi_checkpoint(
    step_dir: str | Path,
    params: dict[str, np.ndarray],
    *,
    value_suffix: bool = False,
    norm_stats: dict[str, Any] | None = None,
    asset_id: str = "trossen",
) -> Path:
    """Save `{"params": tree}` as openpi does (`<step>/params`, orbax PyTree, OCDBT), plus
    `<step>/assets/<asset_id>/norm_stats.json` when `norm_stats` is given."""
    import orbax.checkpoint as ocp

    step = Path(step_dir).resolve()
    step.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.PyTreeCheckpointer()
    checkpointer.save(step / "params", {"params": _nest(params, value_suffix)})
    if norm_stats is not None:
        path = step / "assets" / asset_id / "norm_stats.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"norm_stats": norm_stats}))
    return step
