"""LightVLA's parameter-free visual-token pruner as nn.Modules.

`ImageTokenPruner` takes image tokens and task tokens separately (the layout of pi0 / pi0.5's
`embed_prefix`) and satisfies vla-core's image-token filter Protocol structurally:
    (image_tokens [B,N,D], image_mask [B,N], task_tokens [B,T,D], task_mask [B,T])
        -> (kept_tokens [B,K,D], kept_mask [B,K], keep_index [B,K]).
`TokenPruner` wraps it for LightVLA's original `[cls, patches, task]` LLM-input layout.
Reference: LiAutoAD/LightVLA `prismatic/extern/hf/modeling_prismatic.py`, TokenPruner.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vla_prune.config import PrunerConfig
from vla_prune.scoring import lightvla_scores
from vla_prune.selection import (
    compact,
    count_votes,
    gather_tokens,
    mask_candidates,
    rank_in_groups,
    straight_through_select,
)
from vla_prune.stats import PruneStats


def check_filter_inputs(
    image_tokens: Tensor,
    image_mask: Tensor,
    task_tokens: Tensor,
    task_mask: Tensor,
    hidden_size: int | None = None,
) -> None:
    """Clear errors for the Protocol's four inputs (shapes, mask dtypes, widths)."""
    if image_tokens.ndim != 3:
        raise ValueError(f"image_tokens must be [B, N, D], got shape {tuple(image_tokens.shape)}")
    b, n, d = image_tokens.shape
    if hidden_size is not None and d != hidden_size:
        raise ValueError(f"image_tokens width {d} != pruner hidden_size {hidden_size}")
    if task_tokens.ndim != 3 or task_tokens.shape[0] != b or task_tokens.shape[2] != d:
        raise ValueError(
            f"task_tokens must be [B={b}, T, D={d}], got shape {tuple(task_tokens.shape)}"
        )
    if task_tokens.shape[1] == 0:
        raise ValueError("task_tokens must hold at least one token (T >= 1), got T = 0")
    for name, mask, want in (
        ("image_mask", image_mask, (b, n)),
        ("task_mask", task_mask, (b, task_tokens.shape[1])),
    ):
        if mask.dtype != torch.bool:
            raise TypeError(f"{name} must be a bool tensor, got dtype {mask.dtype}")
        if tuple(mask.shape) != want:
            raise ValueError(f"{name} must have shape {want}, got {tuple(mask.shape)}")


class ImageTokenPruner(nn.Module):
    """LightVLA pruning of image tokens against task (language) tokens. No parameters.

    eval: keep the union of every query's argmax (or a budget, see PrunerConfig); tokens are
        really removed. The batch is padded to its largest kept count K (rounded up to
        `pad_to_multiple`); padded slots are zero with `kept_mask` False.
    train: length unchanged (K = N); slot j holds, with a straight-through gradient, the patch
        chosen by query j from `score + U[0,1)·noise_scale`. `kept_mask[:, j]` is the validity
        of that chosen patch (and of query j's own token).
    Invalid image tokens (missing cameras) are never chosen and their queries do not vote.
    Per-call statistics are in `self.last_stats` (device tensors, no sync).
    """

    def __init__(self, hidden_size: int, config: PrunerConfig | None = None) -> None:
        super().__init__()
        if hidden_size < 1:
            raise ValueError(f"ImageTokenPruner: hidden_size must be >= 1, got {hidden_size}")
        self.hidden_size = hidden_size
        self.config = config or PrunerConfig()
        self.noise_scale: float | None = None
        self.last_stats: PruneStats | None = None

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, config={self.config}, noise_scale={self.noise_scale}"
        )

    def set_noise_scale(self, noise_scale: float | None) -> None:
        """Amplitude of the uniform training noise (None or 0 = none). Eval never adds noise."""
        if noise_scale is not None and noise_scale < 0:
            raise ValueError(f"noise_scale must be >= 0 or None, got {noise_scale}")
        self.noise_scale = noise_scale

    def score(
        self, image_tokens: Tensor, image_mask: Tensor, task_tokens: Tensor, task_mask: Tensor
    ) -> Tensor:
        """Score `[B, N, N]` (rows queries, columns candidates); invalid columns are -inf."""
        check_filter_inputs(image_tokens, image_mask, task_tokens, task_mask, self.hidden_size)
        score = lightvla_scores(
            image_tokens,
            task_tokens,
            task_mask if self.config.mask_task_padding else None,
            compute_dtype=torch.float32 if self.config.fp32_scores else None,
        )
        return mask_candidates(score, image_mask)

    def forward(
        self, image_tokens: Tensor, image_mask: Tensor, task_tokens: Tensor, task_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        n = image_tokens.shape[1] if image_tokens.ndim == 3 else 0
        cfg = self.config
        if cfg.budget_scope == "per_camera" and n % cfg.num_cameras != 0:
            raise ValueError(
                f"budget_scope='per_camera' needs N divisible by num_cameras={cfg.num_cameras}, "
                f"got N = {n}"
            )
        score = self.score(image_tokens, image_mask, task_tokens, task_mask)  # [B, N, N]
        if self.training:
            return self._train_select(score, image_tokens, image_mask)
        return self._eval_select(score, image_tokens, image_mask)

    def _train_select(
        self, score: Tensor, image_tokens: Tensor, image_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        if self.noise_scale:
            score = score + torch.rand_like(score) * self.noise_scale
        choice, mixed = straight_through_select(score, image_tokens)  # [B, N], [B, N, D]
        kept_mask = image_mask & image_mask.gather(1, choice)
        votes = count_votes(choice, image_mask, image_tokens.shape[1])
        self._record(votes, image_mask, kept_mask.sum(-1))
        return mixed, kept_mask, choice

    def _eval_select(
        self, score: Tensor, image_tokens: Tensor, image_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        n = image_tokens.shape[1]
        choice = score.argmax(dim=-1)  # [B, N]
        votes = count_votes(choice, image_mask, n)  # [B, N]
        keep = self._keep_mask(score, votes, image_mask)  # [B, N]
        groups = self.config.num_cameras if self.config.budget_scope == "per_camera" else 1
        budget = self.config.budget_for(n // groups)
        static_k = None if budget is None else budget * groups
        keep_index, kept_mask = compact(keep, self.config.pad_to_multiple, static_k)
        kept = gather_tokens(image_tokens, keep_index)
        kept = torch.where(kept_mask[..., None], kept, torch.zeros_like(kept))
        self._record(votes, image_mask, kept_mask.sum(-1))
        return kept, kept_mask, keep_index

    def _keep_mask(self, score: Tensor, votes: Tensor, image_mask: Tensor) -> Tensor:
        """Union of argmaxes, or a budget / min_keep applied within each scope group."""
        cfg = self.config
        union = votes > 0  # [B, N]; only valid columns can win, only valid rows vote
        if not cfg.has_budget and cfg.min_keep == 0:
            return union
        b, n = votes.shape
        groups = cfg.num_cameras if cfg.budget_scope == "per_camera" else 1
        size = n // groups
        valid_g = image_mask.reshape(b, groups, size).sum(-1)  # [B, C]
        budget = cfg.budget_for(size)
        if budget is not None:
            target = valid_g.clamp(max=budget)
        else:
            union_g = union.reshape(b, groups, size).sum(-1)
            target = torch.maximum(union_g, valid_g.clamp(max=cfg.min_keep))
        # Tie-break: the best score any valid query gives the column.
        col_best = score.masked_fill(~image_mask[:, :, None], float("-inf")).amax(dim=1)
        rank = rank_in_groups(votes.masked_fill(~image_mask, -1), col_best, groups)
        keep = rank.reshape(b, groups, size) < target[..., None]
        return keep.reshape(b, n) & image_mask

    def _record(self, votes: Tensor, image_mask: Tensor, kept_count: Tensor) -> None:
        voters = image_mask.sum(-1)  # [B]
        self.last_stats = PruneStats(
            kept_count=kept_count.detach(),
            union_size=(votes > 0).sum(-1).detach(),
            top_vote_share=(votes.amax(-1).float() / voters.clamp(min=1).float()).detach(),
            num_valid=voters.detach(),
        )


class TokenPruner(nn.Module):
    """LightVLA's pruner for the LLM-input layout `[cls, patches (num_patches), task (rest)]`.

    forward(tokens [B,L,D], position_ids [B,L] | None, attention_mask [B,L] | None)
        -> (tokens [B,L',D], position_ids [B,L'], attention_mask [B,L']).
    The cls token (LightVLA: the LLM's BOS) and the task tokens pass through unchanged with their
    ids; patch slots take the ids of the patches they hold (eval: original ids, gaps allowed;
    train: the selected patch's id, duplicates allowed). Missing position ids default to
    `arange(L)` and a missing mask to all-valid; the returned mask has the input mask's dtype
    (bool if none was given) and is False on padded slots when batch samples keep different
    counts. Task padding is read from the task part of `attention_mask`.
    """

    def __init__(
        self, hidden_size: int, num_patches: int, config: PrunerConfig | None = None
    ) -> None:
        super().__init__()
        if num_patches < 1:
            raise ValueError(f"TokenPruner: num_patches must be >= 1, got {num_patches}")
        self.num_patches = num_patches
        self.pruner = ImageTokenPruner(hidden_size, config)

    def set_noise_scale(self, noise_scale: float | None) -> None:
        self.pruner.set_noise_scale(noise_scale)

    @property
    def last_stats(self) -> PruneStats | None:
        return self.pruner.last_stats

    def forward(
        self,
        tokens: Tensor,
        position_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        if tokens.ndim != 3:
            raise ValueError(f"tokens must be [B, L, D], got shape {tuple(tokens.shape)}")
        b, seq_len, _ = tokens.shape
        n = self.num_patches
        if seq_len < n + 2:
            raise ValueError(
                f"tokens length {seq_len} too short for [cls, {n} patches, >= 1 task token]"
            )
        if position_ids is None:
            position_ids = torch.arange(seq_len, device=tokens.device).expand(b, -1)
        if attention_mask is None:
            attention_mask = torch.ones(b, seq_len, dtype=torch.bool, device=tokens.device)
        for name, t in (("position_ids", position_ids), ("attention_mask", attention_mask)):
            if tuple(t.shape) != (b, seq_len):
                raise ValueError(f"{name} must have shape {(b, seq_len)}, got {tuple(t.shape)}")
        sizes = [1, n, seq_len - n - 1]
        cls_tok, patches, task = tokens.split(sizes, dim=1)
        cls_id, patch_ids, task_ids = position_ids.split(sizes, dim=1)
        cls_mask, patch_mask, task_mask = attention_mask.split(sizes, dim=1)

        kept, kept_mask, keep_index = self.pruner(
            patches, patch_mask.bool(), task, task_mask.bool()
        )
        new_tokens = torch.cat([cls_tok, kept, task], dim=1)
        new_ids = torch.cat([cls_id, patch_ids.gather(1, keep_index), task_ids], dim=1)
        new_mask = torch.cat([cls_mask, kept_mask.to(attention_mask.dtype), task_mask], dim=1)
        return new_tokens, new_ids, new_mask
