"""Turning a score matrix into kept tokens: votes, budgets, batched compaction, straight-through.

All functions work on the whole batch with tensor ops (no Python loop over samples), so a
batch with different kept counts per sample is padded, never split.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mask_candidates(score: Tensor, image_mask: Tensor) -> Tensor:
    """Score `[B, N, N]` with columns of invalid image tokens set to -inf (never selectable).

    A sample without any valid token gets an all-zero score, so softmax / argmax stay finite;
    its selections are discarded by the masks downstream.
    """
    any_valid = image_mask.any(dim=-1)[:, None, None]  # [B, 1, 1]
    masked = score.masked_fill(~image_mask[:, None, :], float("-inf"))
    return torch.where(any_valid, masked, torch.zeros_like(score))


def count_votes(choice: Tensor, voter_mask: Tensor, num_candidates: int) -> Tensor:
    """Votes per candidate `[B, N]` (long): how many valid queries chose each column.

    choice [B, N_q] long, voter_mask [B, N_q] bool (queries of invalid image tokens do not vote).
    """
    votes = torch.zeros(choice.shape[0], num_candidates, dtype=torch.long, device=choice.device)
    return votes.scatter_add_(1, choice, voter_mask.long())


def rank_in_groups(votes: Tensor, tie_break: Tensor, num_groups: int) -> Tensor:
    """Rank `[B, N]` (0 = best) of each token within its group of N // num_groups neighbours.

    Order: more votes first, then larger `tie_break` (the column's best score), then lower index.
    Two stable sorts give the lexicographic order without mixing the keys into one float.
    """
    b, n = votes.shape
    g = n // num_groups
    votes_g = votes.reshape(b, num_groups, g)
    tie_g = tie_break.reshape(b, num_groups, g)
    order = torch.sort(tie_g, dim=-1, descending=True, stable=True).indices  # [B, C, G]
    by_votes = torch.sort(votes_g.gather(-1, order), dim=-1, descending=True, stable=True).indices
    order = order.gather(-1, by_votes)  # position r -> token index within the group
    positions = torch.arange(g, device=votes.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    return rank.reshape(b, n)


def compact(keep: Tensor, multiple: int = 1, max_kept: int | None = None) -> tuple[Tensor, Tensor]:
    """Indices of kept tokens in ascending original order, padded to the batch's max count.

    keep [B, N] bool -> (keep_index [B, K] long, kept_mask [B, K] bool). K is `max_kept` when the
    caller knows an upper bound statically (no device sync), else the batch max (one sync),
    rounded up to `multiple` and capped at N. Padded slots hold indices of dropped tokens (valid
    indices, mask False).
    """
    b, n = keep.shape
    count = keep.sum(dim=-1)  # [B]
    k = max_kept if max_kept is not None else int(count.max().item()) if b > 0 else 0
    k = min(-(-k // multiple) * multiple, n)
    # Stable sort of "not kept" puts kept tokens first, each part in ascending index order.
    order = torch.sort((~keep).to(torch.uint8), dim=-1, stable=True).indices  # [B, N]
    keep_index = order[:, :k]
    kept_mask = torch.arange(k, device=keep.device)[None, :] < count[:, None]
    return keep_index, kept_mask


def gather_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """tokens [B, N, D], index [B, K] -> [B, K, D]."""
    return tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))


def straight_through_select(score: Tensor, patches: Tensor) -> tuple[Tensor, Tensor]:
    """LightVLA's training selection with an exactly one-hot forward.

    score [B, N, N] (noise already added), patches [B, N, D] -> (choice [B, N] long, out [B, N, D]).
    The reference computes `(one_hot + soft - soft.detach()) @ patches`; `1 + s - s` does not
    round back to 1 in low precision, so its forward is only approximately the selected patch.
    Here the forward is a gather (bit-exact) plus `(soft - soft.detach()) @ patches`, whose
    value is exactly zero; gradients are the reference's: the gather routes the output gradient
    to the chosen patch, and the zero term carries `g @ patchesᵀ` into the softmax (fp32)
    and hence into the score.
    """
    choice = score.argmax(dim=-1)  # [B, N]
    soft = torch.softmax(score.float(), dim=-1)  # [B, N, N] fp32
    hard = gather_tokens(patches, choice)  # [B, N, D]
    zero = (soft - soft.detach()).to(patches.dtype) @ patches
    return choice, hard + zero
