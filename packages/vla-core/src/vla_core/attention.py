"""Attention backends behind one signature, chosen by name.

`attend(query [B,Hq,Lq,D], key [B,Hkv,Lk,D], value [B,Hkv,Lk,D], mask [B,Lq,Lk] bool | None)`:

- `eager`: fp32 logits, finite large-negative fill, fp32 softmax (openpi / big_vision semantics).
- `sdpa`: `F.scaled_dot_product_attention` with a bool mask and explicit `scale=`, GQA through
  `enable_gqa` (no materialised repeat).
- `flex`: `torch.nn.attention.flex_attention` with a `BlockMask` (pass one built once per forward
  via `block_mask=`, or let `attend` build one from the dense mask).
- `fa2`: `flash_attn` on CUDA when the mask allows (no mask); otherwise warn once and use sdpa.

Fully masked query rows (padding) differ per backend (eager: mean of V; sdpa/flex: zeros or
similar); they are never read, so compare backends on valid rows only.
eager and sdpa are free of in-place ops on their inputs so they run under `torch.func.jvp`.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ATTENTION_IMPLEMENTATIONS",
    "MASKED_LOGIT",
    "attend",
    "flex_attention_available",
    "validate_attention_implementation",
]

logger = logging.getLogger(__name__)

ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "flex", "fa2")
# big_vision / openpi fill value: finite so a fully masked row gives a uniform softmax, not NaN.
MASKED_LOGIT = -2.3819763e38

_warned: set[str] = set()


def validate_attention_implementation(name: str) -> str:
    """Return `name` if it is a known backend, else raise a ValueError naming the allowed ones."""
    if name not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"attention_implementation must be one of {ATTENTION_IMPLEMENTATIONS}, got {name!r}"
        )
    return name


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message)


def flex_attention_available() -> bool:
    """True when `torch.nn.attention.flex_attention` can be imported in this torch build."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _check_shapes(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None) -> None:
    if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
        raise ValueError(
            "attend expects query [B,Hq,Lq,D], key/value [B,Hkv,Lk,D]; got "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    batch, num_heads, q_len, _ = query.shape
    if key.shape != value.shape or key.shape[0] != batch or key.shape[-1] != query.shape[-1]:
        raise ValueError(
            f"key {tuple(key.shape)} / value {tuple(value.shape)} do not match query "
            f"{tuple(query.shape)}"
        )
    if num_heads % key.shape[1]:
        raise ValueError(
            f"query heads ({num_heads}) must be a multiple of kv heads ({key.shape[1]})"
        )
    if mask is not None and (
        mask.dtype != torch.bool or tuple(mask.shape) != (batch, q_len, key.shape[2])
    ):
        raise ValueError(
            f"mask must be bool [B, Lq, Lk] = {(batch, q_len, key.shape[2])}, got "
            f"{mask.dtype} {tuple(mask.shape)}"
        )


def _eager(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    batch, num_heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    groups = num_heads // kv_heads
    # Group query heads per kv head and broadcast instead of repeating K/V.
    q = query.reshape(batch, kv_heads, groups, q_len, head_dim).float()
    k = key.unsqueeze(2).float()  # [B, Hkv, 1, Lk, D]
    logits = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, Hkv, G, Lq, Lk] fp32
    if mask is not None:
        logits = torch.where(mask[:, None, None], logits, logits.new_tensor(MASKED_LOGIT))
    probs = torch.softmax(logits, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value.unsqueeze(2))  # [B, Hkv, G, Lq, D]
    return out.reshape(batch, num_heads, q_len, head_dim)


def _sdpa(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    return F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=None if mask is None else mask[:, None],
        dropout_p=0.0,
        is_causal=False,
        scale=scale,
        enable_gqa=query.shape[1] != key.shape[1],
    )


def dense_to_block_mask(mask: Tensor) -> Any:
    """A flex `BlockMask` that looks up a dense bool mask [B, Lq, Lk] (any pattern)."""
    from torch.nn.attention.flex_attention import create_block_mask

    batch, q_len, k_len = mask.shape

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return mask[b, q_idx, kv_idx]

    return create_block_mask(mask_mod, batch, None, q_len, k_len, device=str(mask.device))


def _flex(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float, block_mask: Any
) -> Tensor:
    if not flex_attention_available():
        raise RuntimeError(
            "attention_implementation='flex' needs torch.nn.attention.flex_attention"
        )
    from torch.nn.attention.flex_attention import flex_attention

    if block_mask is None and mask is not None:
        block_mask = dense_to_block_mask(mask)
    out = flex_attention(
        query,
        key,
        value,
        block_mask=block_mask,
        scale=scale,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    assert isinstance(out, Tensor)
    return out


def _fa2(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    usable = (
        query.is_cuda
        and query.dtype in (torch.float16, torch.bfloat16)
        and importlib.util.find_spec("flash_attn") is not None
    )
    if not usable:
        _warn_once(
            "fa2-unavailable",
            "attention_implementation='fa2': flash_attn is not importable, the device is not CUDA "
            "or the dtype is not fp16/bf16; falling back to 'sdpa'",
        )
        return _sdpa(query, key, value, mask, scale)
    if mask is not None and not bool(mask.all()):
        _warn_once(
            "fa2-mask",
            "attention_implementation='fa2': flash_attn cannot express this block/padding mask; "
            "falling back to 'sdpa' for masked calls",
        )
        return _sdpa(query, key, value, mask, scale)
    from flash_attn import flash_attn_func  # type: ignore[import-not-found]

    # flash_attn takes [B, L, H, D] and handles MQA/GQA natively.
    out = flash_attn_func(
        query.transpose(1, 2),
        key.transpose(1, 2),
        value.transpose(1, 2),
        softmax_scale=scale,
        causal=False,
    )
    return out.transpose(1, 2)


def attend(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None,
    *,
    scale: float,
    implementation: str = "sdpa",
    block_mask: Any = None,
) -> Tensor:
    """Multi-head attention with GQA/MQA. Returns `[B, Hq, Lq, D]` in `value.dtype`.

    mask: bool `[B, Lq, Lk]`, True = may attend, or None for full attention. `block_mask` (flex
    only) is a prebuilt `BlockMask` equivalent to `mask`, so one can be shared by every layer.
    """
    validate_attention_implementation(implementation)
    _check_shapes(query, key, value, mask)
    if implementation == "eager":
        return _eager(query, key, value, mask, scale)
    if implementation == "sdpa":
        return _sdpa(query, key, value, mask, scale)
    if implementation == "flex":
        return _flex(query, key, value, mask, scale, block_mask)
    return _fa2(query, key, value, mask, scale)
