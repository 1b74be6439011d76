"""Block-causal attention masks (big_vision cumsum rule) and the token positions that go with them.

`ar_mask[b, i] = 1` opens a new causal block; with `block = cumsum(ar_mask)`, key k is visible to
query q iff `block[k] <= block[q]` and both tokens are valid (openpi `make_attn_mask`).
A mask is kept as block ids + validity so each backend can build its own form once per forward:
a dense bool tensor (eager / sdpa) or a flex `BlockMask` evaluated from the ids (flex).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["BlockCausalMask", "block_ids"]


def block_ids(ar_mask: Tensor) -> Tensor:
    """`cumsum(ar_mask)` along the sequence: [B, L] bool/int -> [B, L] long."""
    return torch.cumsum(ar_mask.long(), dim=-1)


@dataclass(frozen=True)
class BlockCausalMask:
    """Visibility of keys to queries: `k_block <= q_block & q_valid & k_valid`.

    q_block, q_valid: [B, Lq]; k_block, k_valid: [B, Lk]. Queries are usually the last Lq keys
    (suffix pass: keys = [prefix cache, suffix]), but any ids work.
    """

    q_block: Tensor
    q_valid: Tensor
    k_block: Tensor
    k_valid: Tensor

    @classmethod
    def from_ar(
        cls, pad_mask: Tensor, ar_mask: Tensor, num_queries: int | None = None
    ) -> BlockCausalMask:
        """Mask for a sequence given its pad [B, L] and ar [B, L] masks; queries = last `num_queries`."""
        ids = block_ids(ar_mask)
        valid = pad_mask.bool()
        n = ids.shape[1] if num_queries is None else num_queries
        return cls(ids[:, -n:], valid[:, -n:], ids, valid)

    def dense(self) -> Tensor:
        """[B, Lq, Lk] bool, True = may attend."""
        visible = self.k_block[:, None, :] <= self.q_block[:, :, None]
        return visible & self.q_valid[:, :, None] & self.k_valid[:, None, :]

    def flex_block_mask(self) -> Any:
        """A flex `BlockMask` computed from the block ids and validity (not from a dense table)."""
        from torch.nn.attention.flex_attention import create_block_mask

        q_block, q_valid, k_block, k_valid = self.q_block, self.q_valid, self.k_block, self.k_valid

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return (
                (k_block[b, kv_idx] <= q_block[b, q_idx]) & q_valid[b, q_idx] & k_valid[b, kv_idx]
            )

        batch, q_len = q_block.shape
        return create_block_mask(
            mask_mod, batch, None, q_len, k_block.shape[1], device=str(q_block.device)
        )
