"""Observation/action windows over a LeRobot dataset, with diffusion_policy's edge padding.

Semantics follow diffusion_policy `common/sampler.py` (`create_indices` / `SequenceSampler`):
one sample per window start `s` in `[-pad_before, L - horizon + pad_after]` of each episode of
length L; the window covers times `s .. s + horizon - 1`, the observations are its first
`n_obs_steps` entries and the actions all `horizon` entries (both start at `s`), and times outside
the episode repeat the first / last frame. `action_is_pad` marks those repeated actions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vla_train.data.reader import LeRobotFrames, read_frames, read_stats
from vla_train.data.video import DEFAULT_TOLERANCE_S

DEFAULT_KEYS = ("observation.state", "observation.environment_state", "observation.image")


class LeRobotWindowDataset(Dataset[dict[str, torch.Tensor]]):
    """`ds[i]` -> {obs key: [n_obs_steps, ...] float32 (images [n_obs_steps, 3, H, W] in [0, 1]),
    "action": [horizon, A] float32, "action_is_pad": [horizon] bool}.

    Columns are loaded once into memory; PNG frames are decoded on first use and cached; video
    frames (`dtype: "video"`) are decoded by timestamp (within `tolerance_s`) on first use into
    a bounded per-process cache, so DataLoader workers decode only the frames their samples need.
    """

    def __init__(
        self,
        root: Path,
        n_obs_steps: int = 2,
        horizon: int = 16,
        keys: Sequence[str] = DEFAULT_KEYS,
        episodes: list[int] | None = None,
        n_action_steps: int = 8,
        pad_before: int | None = None,
        pad_after: int | None = None,
        action_key: str = "action",
        tolerance_s: float = DEFAULT_TOLERANCE_S,
        current_frame_mask: str | None = None,
    ) -> None:
        if n_obs_steps < 1 or horizon < 1 or n_action_steps < 1:
            raise ValueError(
                f"n_obs_steps={n_obs_steps}, horizon={horizon}, n_action_steps={n_action_steps}: "
                "expected positive integers"
            )
        if n_obs_steps > horizon:
            raise ValueError(f"n_obs_steps={n_obs_steps} exceeds horizon={horizon}")
        self.pad_before = n_obs_steps - 1 if pad_before is None else pad_before
        self.pad_after = n_action_steps - 1 if pad_after is None else pad_after
        if not 0 <= self.pad_before < horizon or not 0 <= self.pad_after < horizon:
            raise ValueError(
                f"pad_before={self.pad_before}, pad_after={self.pad_after}: expected 0 <= pad < "
                f"horizon={horizon}"
            )
        self.root = Path(root)
        self.n_obs_steps = n_obs_steps
        self.horizon = horizon
        self.keys = tuple(keys)
        self.action_key = action_key
        if action_key in self.keys:
            raise ValueError(f"keys {self.keys} must not include the action key {action_key!r}")
        mask_keys = (current_frame_mask,) if current_frame_mask else ()
        self.frames: LeRobotFrames = read_frames(
            self.root, keys=(*self.keys, action_key, *mask_keys), tolerance_s=tolerance_s
        )
        available = self.frames.episodes
        if episodes is None:
            episodes = available
        missing = sorted(set(episodes) - set(available))
        if missing:
            raise KeyError(f"episodes {missing[:10]} not in {self.root} (it has {len(available)})")
        self.episodes = list(episodes)
        # One row per sample: (first row of its episode, episode length, window start in time).
        rows = []
        for ep in self.episodes:
            start, stop = self.frames.episode_from[ep], self.frames.episode_to[ep]
            length = stop - start
            first, last = -self.pad_before, length - horizon + self.pad_after
            for s in range(first, last + 1):
                rows.append((start, length, s))
        self._index = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        self.current_frame_mask = current_frame_mask
        if current_frame_mask:
            # Keep only windows whose current (last observed) frame is flagged, e.g. the frames
            # where a replanning expert made a fresh decision (`expert.replanned`).
            if current_frame_mask not in self.frames.columns:
                raise KeyError(f"{self.root}: no column {current_frame_mask!r} to select windows")
            flags = np.asarray(self.frames.columns[current_frame_mask]).reshape(-1).astype(bool)
            first_row, ep_length, window_start = self._index.T
            current = first_row + np.clip(window_start + n_obs_steps - 1, 0, ep_length - 1)
            self._index = self._index[flags[current]]
        self._lowdim = {
            k: torch.from_numpy(np.array(v, dtype=np.float32))  # own, writable copy
            for k, v in self.frames.columns.items()
            if k in (*self.keys, action_key)
        }
        self._offsets = np.arange(horizon, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._index)

    def preload(self) -> LeRobotWindowDataset:
        """Decode every image / video frame now (e.g. before forking DataLoader workers, which then
        share the decoded frames instead of each decoding its own copy). Costs N·H·W·3 bytes."""
        for column in self.frames.images.values():
            column.all()
        return self

    def window_rows(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Dataset rows of sample `i`'s horizon window (edges repeated) and its padding mask."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        start, length, s = self._index[i]
        t = s + self._offsets  # [horizon] times in the episode
        return start + np.clip(t, 0, length - 1), (t < 0) | (t >= length)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rows, is_pad = self.window_rows(i)
        obs_rows = rows[: self.n_obs_steps]
        sample: dict[str, torch.Tensor] = {}
        for key in self.keys:
            if key in self.frames.images:
                frames = self.frames.images[key].get(obs_rows)  # [n_obs, H, W, 3] uint8
                sample[key] = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)
            else:
                sample[key] = self._lowdim[key][torch.from_numpy(obs_rows)]
        sample["action"] = self._lowdim[self.action_key][torch.from_numpy(rows)]
        sample["action_is_pad"] = torch.from_numpy(is_pad)
        return sample

    def stats(self) -> dict[str, dict[str, torch.Tensor]]:
        """{key: {"min", "max", "mean", "std": float32 Tensor}} for the low-dim keys and action,
        from `meta/stats.json` (so they cover the whole dataset, not just `episodes`)."""
        raw = read_stats(self.root)
        out: dict[str, dict[str, torch.Tensor]] = {}
        for key in (*self.keys, self.action_key):
            if key in self.frames.images:
                continue
            if key not in raw:
                raise KeyError(f"{self.root}: no stats for {key!r} (has {sorted(raw)})")
            out[key] = {
                s: torch.as_tensor(raw[key][s], dtype=torch.float32)
                for s in ("min", "max", "mean", "std")
            }
        return out
