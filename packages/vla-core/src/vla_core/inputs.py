"""What `PI0Model` takes and what its embedding steps hand to the engine: a batch of observations,
the embedded prefix (images + prompt) and the embedded suffix (state, noisy actions, time).
Re-exported by `vla_core.pi0`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Observation", "Prefix", "Suffix"]


@dataclass
class Observation:
    """One batch of model inputs.

    images: `[B, n_cams, 3, H, W]` in [-1, 1], or a dict camera name -> `[B, 3, H, W]` (sorted by
    insertion order); image_masks: `[B, n_cams]` bool / dict of `[B]` (None = all present);
    tokens / token_mask: `[B, T]` tokenized prompt (right-padded); state: `[B, state_dim]`
    (pi0; pi0.5 carries the discretised state in the prompt and may leave it None).
    """

    images: Tensor | Mapping[str, Tensor]
    tokens: Tensor
    token_mask: Tensor
    image_masks: Tensor | Mapping[str, Tensor] | None = None
    state: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.tokens.shape[0])

    def stacked_images(self) -> tuple[Tensor, Tensor]:
        """-> images [B, n_cams, 3, H, W], image_masks [B, n_cams] bool."""
        if isinstance(self.images, Mapping):
            names = list(self.images)
            images = torch.stack([self.images[name] for name in names], dim=1)
            if self.image_masks is None:
                masks = None
            elif isinstance(self.image_masks, Mapping):
                missing = [name for name in names if name not in self.image_masks]
                if missing:
                    raise ValueError(f"image_masks has no entry for cameras {missing}")
                masks = torch.stack([self.image_masks[name].bool() for name in names], dim=1)
            else:
                masks = self.image_masks.bool()
        else:
            images = self.images
            if isinstance(self.image_masks, Mapping):
                raise ValueError("image_masks must be a tensor when images is a tensor")
            masks = None if self.image_masks is None else self.image_masks.bool()
        if images.ndim != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be [B, n_cams, 3, H, W], got {tuple(images.shape)}")
        if masks is None:
            masks = torch.ones(images.shape[:2], dtype=torch.bool, device=images.device)
        if tuple(masks.shape) != tuple(images.shape[:2]):
            raise ValueError(
                f"image_masks must be [B, n_cams] = {tuple(images.shape[:2])}, got {tuple(masks.shape)}"
            )
        return images, masks


@dataclass(frozen=True)
class Prefix:
    """Embedded prefix: tokens [B, P, Dp], pad_mask / ar_mask / positions [B, P], and the
    suffix position offset [B] = number of valid tokens of the *unpruned* prefix."""

    tokens: Tensor
    pad_mask: Tensor
    ar_mask: Tensor
    positions: Tensor
    suffix_offset: Tensor


@dataclass(frozen=True)
class Suffix:
    """Embedded suffix: tokens [B, S, De], pad_mask / ar_mask [B, S], AdaRMS cond (pi0.5)."""

    tokens: Tensor
    pad_mask: Tensor
    ar_mask: Tensor
    cond: Tensor | None
