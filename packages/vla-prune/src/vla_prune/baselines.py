"""Training-free comparison baselines behind the same image-token filter signature.

Both reduce the length in train and eval alike (they have nothing to learn and no
straight-through path), unlike ImageTokenPruner whose training output keeps all N slots.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from vla_prune.pruner import check_filter_inputs
from vla_prune.selection import compact, gather_tokens


class RandomKPruner(nn.Module):
    """Keep `keep_tokens` uniformly random valid tokens per camera group (a sanity baseline).

    `num_cameras` splits N into equal groups, each keeping `keep_tokens` (pooled when 1). Kept
    tokens stay in ascending original order. A `generator` makes the draw reproducible.
    """

    def __init__(
        self,
        keep_tokens: int,
        num_cameras: int = 1,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if keep_tokens < 1:
            raise ValueError(f"RandomKPruner: keep_tokens must be >= 1, got {keep_tokens}")
        if num_cameras < 1:
            raise ValueError(f"RandomKPruner: num_cameras must be >= 1, got {num_cameras}")
        self.keep_tokens = keep_tokens
        self.num_cameras = num_cameras
        self.generator = generator

    def forward(
        self, image_tokens: Tensor, image_mask: Tensor, task_tokens: Tensor, task_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        check_filter_inputs(image_tokens, image_mask, task_tokens, task_mask)
        b, n, _ = image_tokens.shape
        c = self.num_cameras
        if n % c != 0:
            raise ValueError(f"RandomKPruner: N = {n} not divisible by num_cameras = {c}")
        device = self.generator.device if self.generator is not None else image_tokens.device
        key = torch.rand(b, n, generator=self.generator, device=device).to(image_tokens.device)
        key = key.masked_fill(~image_mask, -1.0)
        k = min(self.keep_tokens, n // c)
        top = key.reshape(b, c, n // c).topk(k, dim=-1).indices  # [B, C, k]
        keep = torch.zeros(b, c, n // c, dtype=torch.bool, device=image_tokens.device)
        keep = keep.scatter_(-1, top, True).reshape(b, n) & image_mask
        keep_index, kept_mask = compact(keep, max_kept=k * c)
        kept = gather_tokens(image_tokens, keep_index)
        kept = torch.where(kept_mask[..., None], kept, torch.zeros_like(kept))
        return kept, kept_mask, keep_index


class GridPoolPruner(nn.Module):
    """Uniform spatial reduction of each camera's `grid × grid` patch map by `pool × pool`.

    mode "mean": each window becomes the mean of its valid patches (2×2 on 16×16: 256 → 64 per
        camera); `keep_index` is the window's top-left patch, whose position id it takes.
    mode "stride": keep the top-left patch of every window unchanged (uniform selection).
    Patches are row-major per camera and cameras are concatenated along N.
    """

    def __init__(
        self, grid_size: int = 16, pool: int = 2, mode: Literal["mean", "stride"] = "mean"
    ):
        super().__init__()
        if grid_size < 1 or pool < 1 or grid_size % pool != 0:
            raise ValueError(
                f"GridPoolPruner: pool ({pool}) must divide grid_size ({grid_size}), both >= 1"
            )
        if mode not in ("mean", "stride"):
            raise ValueError(f"GridPoolPruner: mode must be 'mean' or 'stride', got {mode!r}")
        self.grid_size = grid_size
        self.pool = pool
        self.mode = mode

    def forward(
        self, image_tokens: Tensor, image_mask: Tensor, task_tokens: Tensor, task_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        check_filter_inputs(image_tokens, image_mask, task_tokens, task_mask)
        b, n, d = image_tokens.shape
        g, p = self.grid_size, self.pool
        if n % (g * g) != 0:
            raise ValueError(f"GridPoolPruner: N = {n} is not a multiple of grid {g}×{g}")
        cams, w = n // (g * g), g // p
        # anchor index of each window: camera offset + row·g + col (top-left patch)
        rows = torch.arange(w, device=image_tokens.device) * p
        anchor = (rows[:, None] * g + rows[None, :]).reshape(-1)  # [w·w]
        offsets = torch.arange(cams, device=image_tokens.device) * g * g
        keep_index = (offsets[:, None] + anchor[None, :]).reshape(-1).expand(b, -1)  # [B, K]
        if self.mode == "stride":
            kept_mask = image_mask.gather(1, keep_index)
            kept = gather_tokens(image_tokens, keep_index)
        else:
            # [B, cams, w, p, w, p, D]: window (i, j) holds rows i·p.., cols j·p..
            x = image_tokens.reshape(b, cams, w, p, w, p, d)
            m = image_mask.reshape(b, cams, w, p, w, p, 1).to(image_tokens.dtype)
            total = (x * m).sum(dim=(3, 5))  # [B, cams, w, w, D]
            count = m.sum(dim=(3, 5))
            kept = (total / count.clamp(min=1)).reshape(b, -1, d)
            kept_mask = (count > 0).reshape(b, -1)
        kept = torch.where(kept_mask[..., None], kept, torch.zeros_like(kept))
        return kept, kept_mask, keep_index.contiguous()
