"""Every window of a small low-dim dataset stacked once into tensors.

The PushT trainer's step is a few milliseconds of compute per sample batch, while reading a batch
of 256 windows one `__getitem__` at a time (parquet-backed slicing, the block-frame transform)
and collating them costs about as much again (≈ 40 ms). Stacking all windows once when the
training set changes turns a batch into one index per column. The values are exactly those
`default_collate` would have stacked, so training is unchanged bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset


class TensorWindows(Dataset[dict[str, Tensor]]):
    """`columns[key][i]` is window i's `key`; `batch(indices)` gathers many at once."""

    def __init__(self, columns: Mapping[str, Tensor]) -> None:
        lengths = {key: len(value) for key, value in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"columns of different lengths: {lengths}")
        self.columns = dict(columns)
        self._len = next(iter(lengths.values()), 0)

    @classmethod
    def from_dataset(cls, dataset: Any) -> TensorWindows:
        """Stack `dataset[i]` for every i (each item a dict of tensors with fixed shapes)."""
        items = [dataset[i] for i in range(len(dataset))]
        if not items:
            raise ValueError(f"{type(dataset).__name__} has no windows to stack")
        return cls({key: torch.stack([item[key] for item in items]) for key in items[0]})

    @classmethod
    def concat(cls, parts: Sequence[TensorWindows]) -> TensorWindows:
        keys = list(parts[0].columns)
        for part in parts[1:]:
            if list(part.columns) != keys:
                raise ValueError(f"parts have different keys: {keys} vs {list(part.columns)}")
        return cls({key: torch.cat([part.columns[key] for part in parts]) for key in keys})

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {key: value[i] for key, value in self.columns.items()}

    def batch(self, indices: Sequence[int] | Tensor) -> dict[str, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return {key: value.index_select(0, index) for key, value in self.columns.items()}
