"""Cheap per-call selection statistics, kept as device tensors until someone asks for numbers."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class PruneStats:
    """What the last forward selected, per sample (all detached, on the input's device).

    kept_count [B] long: tokens kept (eval) / valid output slots (train).
    union_size [B] long: distinct patches chosen by at least one valid query (the LightVLA
        kept count before any budget or `min_keep`); in training, of the noisy choices.
    top_vote_share [B] float: share of valid queries voting for the most-voted patch; near 1
        means the queries collapsed onto one patch (the pi0.5 port measured ≈ 0.75).
    num_valid [B] long: valid image tokens (candidates).
    """

    kept_count: Tensor
    union_size: Tensor
    top_vote_share: Tensor
    num_valid: Tensor

    def summary(self) -> dict[str, float]:
        """Batch means / extremes as Python floats. This is the one call that syncs the device."""
        kept = self.kept_count.float()
        return {
            "kept_mean": kept.mean().item(),
            "kept_min": kept.min().item(),
            "kept_max": kept.max().item(),
            "union_mean": self.union_size.float().mean().item(),
            "top_vote_share_mean": self.top_vote_share.float().mean().item(),
            "valid_mean": self.num_valid.float().mean().item(),
        }
