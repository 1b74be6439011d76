"""The image-token filter hook: a structural Protocol, so vla-core never imports a pruner.

`vla_prune.ImageTokenPruner` (LightVLA-style) satisfies it without inheriting from anything.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

__all__ = ["ImageTokenFilter"]


@runtime_checkable
class ImageTokenFilter(Protocol):
    """Select which image tokens enter the prefix.

    image_tokens [B, N, D] (all cameras pooled), image_mask [B, N] bool, task_tokens [B, T, D]
    (language embeddings), task_mask [B, T] bool -> (kept_tokens [B, K, D], kept_mask [B, K] bool,
    keep_index [B, K] long = index into the original N of the token in each slot).
    eval: K <= N, tokens really removed (padded slots have kept_mask False);
    train: K == N, slot j holds a (straight-through) mixture selecting patch keep_index[:, j].
    Whether it prunes is the filter's business (its own train / eval mode).
    """

    def __call__(
        self, image_tokens: Tensor, image_mask: Tensor, task_tokens: Tensor, task_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]: ...
