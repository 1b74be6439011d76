"""Random-k and grid-pool baselines: same signature as ImageTokenPruner, exact oracles."""

from __future__ import annotations

import pytest
import torch

from vla_prune import GridPoolPruner, RandomKPruner


def _inputs(b: int, cams: int, grid: int, d: int = 4):
    n = cams * grid * grid
    tokens = torch.randn(b, n, d)
    return (
        tokens,
        torch.ones(b, n, dtype=torch.bool),
        torch.randn(b, 3, d),
        torch.ones(b, 3, dtype=torch.bool),
    )


def test_random_k_per_camera_is_valid_sorted_and_seeded() -> None:
    tokens, image_mask, task, task_mask = _inputs(3, 3, 4)
    image_mask[1, 16:32] = False
    pruner = RandomKPruner(5, num_cameras=3, generator=torch.Generator().manual_seed(0))
    kept, mask, index = pruner(tokens, image_mask, task, task_mask)
    assert kept.shape == (3, 15, 4)
    assert mask.sum(-1).tolist() == [15, 10, 15]
    for b in range(3):
        idx = index[b][mask[b]]
        assert (idx.diff() > 0).all() and image_mask[b, idx].all()
        assert torch.equal(kept[b][mask[b]], tokens[b, idx])
        counts = torch.bincount(idx // 16, minlength=3).tolist()
        assert counts == ([5, 0, 5] if b == 1 else [5, 5, 5])
    again = RandomKPruner(5, num_cameras=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again(tokens, image_mask, task, task_mask)[2], index)
    other = RandomKPruner(5, num_cameras=3, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other(tokens, image_mask, task, task_mask)[2], index)


def test_grid_mean_pool_2x2() -> None:
    tokens, image_mask, task, task_mask = _inputs(2, 2, 4)
    image_mask[1, 0] = False  # one masked patch in the first window
    kept, mask, index = GridPoolPruner(grid_size=4, pool=2)(tokens, image_mask, task, task_mask)
    assert kept.shape == (2, 8, 4) and mask.all()
    assert index[0].tolist() == [0, 2, 8, 10, 16, 18, 24, 26]
    torch.testing.assert_close(kept[0, 0], tokens[0, [0, 1, 4, 5]].mean(0))
    torch.testing.assert_close(kept[0, 7], tokens[0, [26, 27, 30, 31]].mean(0))
    torch.testing.assert_close(kept[1, 0], tokens[1, [1, 4, 5]].mean(0))  # masked patch excluded


def test_grid_stride_selects_anchors() -> None:
    tokens, image_mask, task, task_mask = _inputs(1, 1, 4)
    image_mask[0, 2] = False
    kept, mask, index = GridPoolPruner(4, 2, mode="stride")(tokens, image_mask, task, task_mask)
    assert index[0].tolist() == [0, 2, 8, 10]
    assert mask[0].tolist() == [True, False, True, True]
    assert torch.equal(kept[0, [0, 2, 3]], tokens[0, [0, 8, 10]]) and (kept[0, 1] == 0).all()


def test_baseline_validation() -> None:
    with pytest.raises(ValueError, match="pool"):
        GridPoolPruner(16, 3)
    with pytest.raises(ValueError, match="mode"):
        GridPoolPruner(16, 2, mode="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keep_tokens"):
        RandomKPruner(0)
    tokens, image_mask, task, task_mask = _inputs(1, 1, 4)
    with pytest.raises(ValueError, match="multiple of grid"):
        GridPoolPruner(3, 1)(tokens, image_mask, task, task_mask)
    with pytest.raises(ValueError, match="num_cameras"):
        RandomKPruner(2, num_cameras=3)(tokens, image_mask, task, task_mask)
