"""LeRobotDataset on-disk layout: path templates and feature specs (atomic writes: vla_train.atomic).

The names and templates follow huggingface/lerobot `src/lerobot/datasets/utils.py` (v3.0), so a
folder we write is laid out like one produced by `LeRobotDataset`: images either inside the parquet as PNG bytes
(lerobot's `dtype: "image"`) or as mp4 streams under `videos/` (`dtype: "video"`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Re-exported: data/ and pusht/ import the atomic writers from here.
from vla_train.atomic import atomic_write_bytes as atomic_write_bytes
from vla_train.atomic import atomic_write_json as atomic_write_json

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # max files per chunk folder
DATA_FILES_SIZE_IN_MB = 100  # max parquet data file size before starting a new file
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
# v2.1 (read only): one parquet per episode and JSON-lines metadata.
V21_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_EPISODES_PATH = "meta/episodes.jsonl"
V21_TASKS_PATH = "meta/tasks.jsonl"
V21_EPISODES_STATS_PATH = "meta/episodes_stats.jsonl"
V21_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
VIDEO_FILES_SIZE_IN_MB = 500  # lerobot's default before starting a new mp4

#: Per-frame bookkeeping columns every LeRobot dataset carries (lerobot `DEFAULT_FEATURES`).
DEFAULT_COLUMNS: dict[str, str] = {
    "timestamp": "float32",
    "frame_index": "int64",
    "episode_index": "int64",
    "index": "int64",
    "task_index": "int64",
}
NUMERIC_DTYPES = ("float32", "float64", "int64", "int32", "bool", "uint8")
FRAME_DTYPES = ("image", "video")


@dataclass(frozen=True)
class FeatureSpec:
    """One user feature: numeric `dtype` with a per-frame `shape`, `dtype="image"` (H, W, C)
    uint8 frames stored as PNG bytes in a `{bytes, path}` struct column, or `dtype="video"`
    (H, W, C) frames in mp4 files (read only; the writer turns images into video on request)."""

    dtype: str
    shape: tuple[int, ...]
    names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.dtype not in (*NUMERIC_DTYPES, *FRAME_DTYPES):
            raise ValueError(
                f"FeatureSpec.dtype={self.dtype!r}: expected one of {(*NUMERIC_DTYPES, *FRAME_DTYPES)}"
            )
        if not self.shape or any(int(d) <= 0 for d in self.shape):
            raise ValueError(f"FeatureSpec.shape={self.shape}: expected positive dimensions")
        if self.dtype in FRAME_DTYPES and (len(self.shape) != 3 or self.shape[2] != 3):
            raise ValueError(f"{self.dtype} FeatureSpec.shape={self.shape}: expected (H, W, 3)")
        if (
            self.names is not None
            and self.dtype not in FRAME_DTYPES
            and len(self.names) != self.shape[-1]
        ):
            raise ValueError(
                f"FeatureSpec.names has {len(self.names)} entries for shape {self.shape}"
            )

    def to_info(self) -> dict[str, Any]:
        """The `features[key]` entry of `meta/info.json`."""
        if self.dtype == "image":
            return {
                "dtype": "image",
                "shape": list(self.shape),
                "names": ["height", "width", "channels"],
                "info": {"encoding": "png", "storage": "parquet struct {bytes, path}"},
            }
        names: Any = {"axes": list(self.names)} if self.names is not None else None
        return {"dtype": self.dtype, "shape": list(self.shape), "names": names}

    @classmethod
    def from_info(cls, key: str, entry: dict[str, Any]) -> FeatureSpec:
        dtype = entry.get("dtype")
        shape = entry.get("shape")
        if dtype is None or shape is None:
            raise ValueError(f"meta/info.json features[{key!r}] lacks 'dtype' or 'shape': {entry}")
        names = entry.get("names")
        if dtype == "video" and isinstance(names, list) and str(names[0]).startswith("channel"):
            shape = [shape[1], shape[2], shape[0]]  # some v2.x datasets list (C, H, W)
        axes = None
        if isinstance(names, dict) and len(names) == 1:
            axes = tuple(next(iter(names.values())))
        elif (
            isinstance(names, list)
            and dtype not in FRAME_DTYPES
            and all(isinstance(n, str) for n in names)
        ):
            axes = tuple(names)
        if axes is not None and len(axes) != shape[-1]:
            axes = None
        return cls(dtype=str(dtype), shape=tuple(int(d) for d in shape), names=axes)


def load_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (is this a LeRobot dataset root?)")
    return json.loads(path.read_text())
