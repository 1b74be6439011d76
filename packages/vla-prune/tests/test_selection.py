"""Batched selection primitives against per-sample Python oracles (exact)."""

from __future__ import annotations

import torch

from vla_prune.selection import compact, count_votes, mask_candidates, rank_in_groups


def test_compact_orders_kept_first_ascending_and_pads() -> None:
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(5, 20, generator=g) < 0.3
    keep[2] = False
    index, mask = compact(keep, multiple=4)
    kmax = int(keep.sum(-1).max())
    assert index.shape == (5, -(-kmax // 4) * 4)
    for b in range(5):
        expected = torch.nonzero(keep[b]).flatten()
        c = len(expected)
        assert torch.equal(index[b, :c], expected)
        assert mask[b, :c].all() and not mask[b, c:].any()
        assert not keep[b, index[b, c:]].any()  # padded slots point at dropped tokens
    static_index, _ = compact(keep, max_kept=7)
    assert static_index.shape == (5, 7)


def test_count_votes_ignores_invalid_voters() -> None:
    choice = torch.tensor([[0, 0, 2, 3]])
    voters = torch.tensor([[True, True, True, False]])
    assert count_votes(choice, voters, 4).tolist() == [[2, 0, 1, 0]]


def test_rank_in_groups_is_lexicographic() -> None:
    votes = torch.tensor([[0, 3, 3, 1, 0, 0, 2, 2]])
    tie = torch.tensor([[5.0, 1.0, 2.0, 0.0, 7.0, 7.0, -1.0, 4.0]])
    # pooled: (3, 2.0)=2, (3, 1.0)=1, (2, 4.0)=7, (2, -1)=6, (1)=3, then 0 votes by score 7,7 (index), 5
    assert rank_in_groups(votes, tie, 1).tolist() == [[7, 1, 0, 4, 5, 6, 3, 2]]
    # two groups of 4
    assert rank_in_groups(votes, tie, 2).tolist() == [[3, 1, 0, 2, 2, 3, 1, 0]]


def test_mask_candidates() -> None:
    score = torch.ones(2, 3, 3)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    out = mask_candidates(score, mask)
    assert torch.isinf(out[0, :, 1]).all() and (out[0, :, [0, 2]] == 1).all()
    assert (out[1] == 0).all()  # nothing valid: finite zeros, discarded downstream
