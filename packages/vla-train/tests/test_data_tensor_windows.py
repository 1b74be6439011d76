"""`TensorWindows`: stacked windows give exactly the batches the DataLoader would collate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import ConcatDataset, default_collate

from vla_train._testing import write_random_walk_dataset
from vla_train.data import LeRobotWindowDataset
from vla_train.data.tensor_windows import TensorWindows
from vla_train.pusht.frames import BlockFrameDataset


def _windows(root: Path) -> LeRobotWindowDataset:
    return LeRobotWindowDataset(
        root,
        n_obs_steps=2,
        horizon=16,
        n_action_steps=8,
        keys=("observation.state", "observation.environment_state"),
    )


def test_batches_equal_the_collated_windows(tmp_path: Path) -> None:
    a = write_random_walk_dataset(tmp_path / "a", n_episodes=2)
    b = write_random_walk_dataset(tmp_path / "b", n_episodes=3, seed=1)
    parts = [BlockFrameDataset(_windows(a)), BlockFrameDataset(_windows(b))]
    stacked = TensorWindows.concat([TensorWindows.from_dataset(p) for p in parts])
    reference = ConcatDataset(parts)
    assert len(stacked) == len(reference)
    indices = torch.randperm(len(reference), generator=torch.Generator().manual_seed(0))[:37]
    expected = default_collate([reference[int(i)] for i in indices])
    got = stacked.batch(indices.tolist())
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    assert torch.equal(stacked[5]["action"], reference[5]["action"])


def test_mismatched_columns_are_refused() -> None:
    with pytest.raises(ValueError, match="different lengths"):
        TensorWindows({"a": torch.zeros(3, 2), "b": torch.zeros(4, 2)})
    with pytest.raises(ValueError, match="different keys"):
        TensorWindows.concat(
            [TensorWindows({"a": torch.zeros(1)}), TensorWindows({"b": torch.zeros(1)})]
        )
